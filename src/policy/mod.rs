//! Pure decisions, without I/O: is a request valid against its role, what execution it
//! starts, have its votes met the role's rule, what an execution's state means
//! ([`decide`]); does a message from AWS belong to a request Kubernetes approved
//! ([`authorize`]); may an active grant be extended, and to when ([`extension`]); IAM
//! ARNs ([`arn`]).
pub mod arn;
pub mod authorize;
pub mod decide;
pub mod extension;

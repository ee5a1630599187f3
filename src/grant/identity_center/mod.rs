//! The `IdentityCenter` grant method: an account assignment of a permission set to the
//! requester's Identity Center user, in each of the role's accounts.
//!
//! The state machine creates and deletes the assignments itself (`deploy/aws/aws-jit.yaml`,
//! `aws-sdk:ssoadmin:*`), acting only on the [`GrantTarget`] the operator's approval
//! answer carries, so access ends at its expiry even when the cluster is gone. The
//! operator's part: map the requester to a user ([`user_for`]), name the permission set
//! by ARN ([`PermissionSets`]), build the target ([`target`]).
//!
//! Sessions: deleting an assignment does not end the sessions already issued to the user
//! through it; they last up to the permission set's session duration (see
//! `docs/security.md`).
pub mod io;
pub mod rules;

pub use io::{IdentityCenterGrants, PermissionSets};
pub use rules::{IdentityCenterError, describe, is_permission_set_arn, target, user_for};

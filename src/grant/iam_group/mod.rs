//! The `IamGroup` grant method: the requester's IAM user joins an IAM group for the
//! grant's duration.
//!
//! The state machine adds and removes the membership itself (`aws-sdk:iam:addUserToGroup`
//! / `removeUserFromGroup`), acting only on the [`GrantTarget`] of the operator's
//! approval answer. The operator's part: map the requester to an IAM user of the group's
//! account ([`user_for`]) and build the target ([`target`]).
//!
//! Removal takes the group's rights from the user's own keys at once (after IAM
//! propagation); role sessions the user assumed with those rights live on until they
//! expire (see `docs/security.md`).
pub mod io;
pub mod rules;

pub use io::IamGroupGrants;
pub use rules::{IamGroupError, target, user_for};

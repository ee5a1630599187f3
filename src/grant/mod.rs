//! Grant methods: how approved access is made and taken away in AWS, one module per
//! method, and the drift [`sweeper`] that removes what no approved request accounts for.
pub mod iam_group;
pub mod identity_center;
pub mod sweeper;
pub mod trust_policy;

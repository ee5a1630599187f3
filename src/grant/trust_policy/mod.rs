//! The `TrustPolicy` grant method: a statement in the target role's trust policy that
//! lets the requester assume it, as one named session, until an expiry AWS enforces.
//!
//! - [`document`]: the trust-policy document and its statements (pure);
//! - [`session`]: the grant's sessions and the deny that ends them (pure);
//! - [`worker`]: the FIFO work-queue consumer that edits trust policies with IAM (the
//!   only method the operator performs itself: edits of one document must not race).
pub mod document;
pub mod session;
pub mod worker;

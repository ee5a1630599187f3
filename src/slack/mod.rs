//! Slack, both ways: the [`relay`] posts the alert queue's events to Slack; the
//! [`interactions`] turn clicks into votes.
pub mod interactions;
pub mod relay;

//! Talking to AWS outside the grant methods: Step Functions ([`sfn`]), the one SQS
//! consumer loop every queue of aws-jit runs on ([`consumer`]) and the one back-off
//! policy ([`retry`]), the security findings the operator puts on the alert queue
//! ([`alerts`]), and the [`authority`] that checks every message from AWS against
//! Kubernetes before anything acts on it.
pub mod alerts;
pub mod authority;
pub mod calls;
pub mod consumer;
pub mod retry;
pub mod sfn;

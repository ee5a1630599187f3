//! Talking to AWS outside the grant methods: Step Functions ([`sfn`]) and the security
//! findings the operator puts on the alert queue ([`alerts`]).
pub mod alerts;
pub mod sfn;

//! Integration tests on the real local stack: kube-apiserver + etcd built from Go
//! modules, moto's server running the shipped state machine. One stack per test run
//! (see `support::stack`), a namespace or CloudFormation stack per test.

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod attacks;
mod break_glass;
mod chart;
mod consistency;
mod controller;
mod crashes;
mod crds;
mod extensions;
mod gitops;
mod ha;
mod interactions;
mod methods;
mod plugin;
mod policy_eval;
mod relay;
mod sandbox;
mod schedule;
mod sessions;
mod socket_mode;
mod stack;
mod statemachine;
mod throttling;
mod worker;

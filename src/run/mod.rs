//! Process wiring: the [`operator`] (the controller's loops together), [`leader`]
//! election, and [`drain`] (end every grant before aws-jit goes away).
pub mod drain;
pub mod leader;
pub mod operator;

//! statemachine tests

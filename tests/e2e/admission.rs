//! admission tests

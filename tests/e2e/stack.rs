//! stack tests

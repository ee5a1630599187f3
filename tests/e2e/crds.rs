//! crds tests

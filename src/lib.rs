//! aws-jit: just-in-time, time-bound, approved admin access to AWS, as a Kubernetes operator.

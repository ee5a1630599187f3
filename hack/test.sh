#!/usr/bin/env bash
# Every test of the project: formatting, lints, unit tests, CRD drift, and the
# integration suite on the real local stack (kube-apiserver + etcd + moto).
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(hack/ensure-tools.sh)"

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings" >&2
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test" >&2
# Integration tests mostly wait on the apiserver and on state machine timers, so more
# threads than cores keeps the suite short without loading the machine.
cargo test --locked --all-targets -- --test-threads="${AWS_JIT_TEST_THREADS:-8}"

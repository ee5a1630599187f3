#!/usr/bin/env bash
# `make sandbox`: the local stack, the operator, the sample AccessRole and the sample
# users' files, up until Ctrl-C (examples/sandbox.rs). Builds what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools').
exports=$(hack/ensure-tools.sh)
eval "$exports"
# The plugin the users' PATH points at (target/debug/kubectl-jit), then the sandbox.
cargo build --locked --quiet --bin kubectl-jit
exec cargo run --locked --quiet --example sandbox

#!/usr/bin/env bash
# The relay benchmark of BENCHMARKS.md ("Relay"): N alerts (default 300) over 10 channels
# through the `aws-jit relay` binary on the local stack, against the Slack stand-in.
# Release builds unless RELAY_BENCH_PROFILE=dev. Everything it starts stops when it ends.
#
#   hack/relay-bench.sh                       # N = 300, all sent at once
#   hack/relay-bench.sh 100 --rate 5          # flags go to the example (--help)
set -euo pipefail
cd "$(dirname "$0")/.."
# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools'), and the run would go on without its tools.
exports=$(hack/ensure-tools.sh)
eval "$exports"

profile=(--release)
[[ ${RELAY_BENCH_PROFILE:-release} == dev ]] && profile=()
# The relay runs as its own process (its CPU and RSS are measured alone): build it first.
cargo build --locked "${profile[@]}" --quiet --bin aws-jit
cargo run --locked "${profile[@]}" --quiet --example relay_bench -- "$@"

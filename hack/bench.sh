#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: N AccessRequests (default: 100, then 500) through the
# operator on the local stack, with an auto-approver. Release builds, so the figures
# mean something. Each N runs on a fresh stack; everything stops when a run ends.
#
#   hack/bench.sh            # N = 100 and 500
#   hack/bench.sh 50         # one run, N = 50
#   hack/bench.sh 200 -- --poll-interval 15s   # flags after -- go to every run
set -euo pipefail
cd "$(dirname "$0")/.."
# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools'), and the run would go on without its tools.
exports=$(hack/ensure-tools.sh)
eval "$exports"

sizes=()
while (($#)) && [[ $1 != -- ]]; do
	[[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "bench: N must be a positive integer, got '$1'" >&2; exit 2; }
	sizes+=("$1")
	shift
done
[[ ${1:-} == -- ]] && shift
((${#sizes[@]})) || sizes=(100 500)

# The operator runs as its own process (its CPU and RSS are measured alone): build it first.
cargo build --locked --release --quiet --bin aws-jit
for n in "${sizes[@]}"; do
	cargo run --locked --release --quiet --example bench -- "$n" "$@"
done

#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md: N AccessRequests (default: 100, 500, then 1000) through
# the operator on the local stack, with an auto-approver, each beside moto alone on the
# same N; or (--existing M) M AccessRequests already in the apiserver, a cold start and a
# leader takeover. Release builds, so the figures mean something. Each run starts a
# fresh stack; everything stops when a run ends.
#
#   hack/bench.sh                    # N = 100, 500 and 1000
#   hack/bench.sh 50                 # one run, N = 50
#   hack/bench.sh --existing 10000   # 10,000 existing requests (1 % open)
#   hack/bench.sh 200 -- --poll-interval 15s   # flags after -- go to every run
#   hack/bench.sh 100 -- --operator-arg=--max-concurrent-reconciles=32
set -euo pipefail
cd "$(dirname "$0")/.."

sizes=()
existing=()
while (($#)) && [[ $1 != -- ]]; do
	if [[ $1 == --existing ]]; then
		[[ ${2:-} =~ ^[1-9][0-9]*$ ]] || { echo "bench: --existing needs a positive integer, got '${2:-}'" >&2; exit 2; }
		existing+=("$2")
		shift 2
		continue
	fi
	[[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "bench: N must be a positive integer, got '$1'" >&2; exit 2; }
	sizes+=("$1")
	shift
done
[[ ${1:-} == -- ]] && shift
((${#sizes[@]} + ${#existing[@]})) || sizes=(100 500 1000)

# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools'), and the run would go on without its tools.
exports=$(hack/ensure-tools.sh)
eval "$exports"

# The operator runs as its own process (its CPU and RSS are measured alone): build it first.
cargo build --locked --release --quiet --bin aws-jit --example bench
status=0
for n in "${sizes[@]}"; do
	cargo run --locked --release --quiet --example bench -- "$n" "$@" || status=$?
done
for m in "${existing[@]}"; do
	cargo run --locked --release --quiet --example bench -- --existing "$m" "$@" || status=$?
done
exit "$status"

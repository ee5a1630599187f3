#!/usr/bin/env bash
# Every test of the project: formatting, lints, unit tests, CRD drift, the integration
# suite on the real local stack (kube-apiserver + etcd + moto), and the chart's pods
# under a real kubelet (tests/node/, inside hack/node/sandbox.sh; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools'), and the run would go on without its tools.
exports=$(hack/ensure-tools.sh)
eval "$exports"

echo "==> cfn-lint deploy/aws/aws-jit.yaml" >&2
# moto deploys the template but skips its Rules and queue policies: cfn-lint checks
# them against CloudFormation's schemas (2 s).
"$AWS_JIT_CFN_LINT" deploy/aws/aws-jit.yaml
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings" >&2
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo build --release --bin aws-jit (the image the node tests run)" >&2
cargo build --locked --release --bin aws-jit
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
export AWS_JIT_IMAGE_BINARY=$target_dir/release/aws-jit
echo "==> cargo test" >&2
# Integration tests mostly wait on the apiserver and on state machine timers, so more
# threads than cores keeps the suite short without loading the machine.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --lib --bins --tests -- --test-threads="${AWS_JIT_TEST_THREADS:-8}" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"

#!/usr/bin/env bash
# Tests the policy_eval tests (tests/e2e/policy_eval.rs): runs them once as they are (all
# must pass), then once per mutation of hack/policy-eval/mutate.py (a broken condition,
# a wrong request context, a rubber-stamp evaluator, ...), each of which must make at
# least one of them fail. Prints which tests caught each mutation; exits 1 if one
# survived. Not part of `make test` (a few minutes: one test run per mutation).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/../.."

exports=$(hack/ensure-tools.sh)
eval "$exports"
export REAL_EVAL=$AWS_JIT_POLICY_EVAL
export AWS_JIT_POLICY_EVAL=$PWD/hack/policy-eval/mutate.py
cargo test --locked --test e2e --no-run >&2

run() {
	MUTATION=$1 cargo test --quiet --locked --test e2e -- policy_eval:: --test-threads=2 2>&1 || true
}

out=$(run none)
if ! grep -q '^test result: ok' <<<"$out"; then
	printf '%s\n' "$out"
	echo "mutants: the tests fail without any mutation" >&2
	exit 1
fi

status=0
mutations=$(hack/policy-eval/mutate.py --list)
for m in $mutations; do
	out=$(run "$m")
	caught=$(sed -n 's/^test policy_eval::\([a-z0-9_]*\) \.\.\. FAILED$/\1/p; s/^    policy_eval::\([a-z0-9_]*\)$/\1/p' <<<"$out" | sort -u | tr '\n' ' ')
	if [[ -z $caught ]]; then
		echo "SURVIVED $m"
		status=1
	else
		echo "caught   $m by: $caught"
	fi
done
exit "$status"

#!/usr/bin/env bash
# The README's demo: builds what it needs, then runs examples/demo.rs on the local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
# On a line of its own: `eval "$(…)"` would hide a failed build (eval's status is the
# exports', not ensure-tools'), and the run would go on without its tools.
exports=$(hack/ensure-tools.sh)
eval "$exports"
exec cargo run --locked --quiet --example demo

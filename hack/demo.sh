#!/usr/bin/env bash
# The README's demo: builds what it needs, then runs examples/demo.rs on the local stack.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(hack/ensure-tools.sh)"
exec cargo run --locked --quiet --example demo

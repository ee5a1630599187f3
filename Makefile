# The two commands of the README. Each does its own set-up (Go-built Kubernetes
# binaries and moto's virtualenv, cached under ~/.cache/aws-jit; cargo build).
.PHONY: test demo sandbox crds tools check-dockerfile

test:
	bash hack/test.sh

demo:
	bash hack/demo.sh

# Optional, beside the two commands: the local stack and the operator with sample users,
# up until Ctrl-C, to try the `kubectl jit` plugin by hand (README: the sandbox tour).
sandbox:
	bash hack/sandbox.sh

# Regenerate the checked-in CRDs from the Rust types (and the chart's copy of them).
crds:
	cargo run --quiet -- crdgen > crds/aws-jit.yaml
	cp crds/aws-jit.yaml charts/aws-jit/crds/aws-jit.yaml

tools:
	bash hack/ensure-tools.sh >/dev/null

# Lint the Dockerfile (hadolint) and run its build commands outside Docker (no engine
# needed). Not part of `make test`: the first run compiles the dependencies again.
check-dockerfile:
	bash hack/check-dockerfile.sh

# The `kubectl jit` plugin from source, into ~/.cargo/bin (on PATH, kubectl finds it as
# `kubectl jit`). docs/plugin.md has the krew install from a release archive.
.PHONY: install-plugin
install-plugin:
	cargo install --locked --path . --bin kubectl-jit

# syntax=docker/dockerfile:1
# One image, one binary (`aws-jit`) for the chart's three uses: the controller and relay
# containers and the pre-delete drain Job choose the subcommand with their args.
#
#   docker build -t aws-jit .
#   docker run --rm aws-jit --help
#
# hack/check-dockerfile.sh lints this file (hadolint) and runs its build commands
# outside Docker; see there for what is and is not verified without a Docker engine.
# hack/image/build.py rebuilds the runtime stage without Docker (reading this file for
# it) for the tests that run the chart's pods under a real kubelet (tests/node/);
# tests/image.rs checks that the two agree. Change the runtime stage there too.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Dependencies first: this layer is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN cargo fetch --locked
COPY src ./src
# Locked and offline: exactly the versions in Cargo.lock, nothing fetched that the
# layer above did not. The target dir is a BuildKit cache, so rebuilds are incremental.
RUN --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --offline --bin aws-jit \
    && install -D -m 0755 target/release/aws-jit /out/aws-jit

# glibc, libgcc and CA certificates; no shell, no package manager; user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/aws-jit /aws-jit
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/aws-jit"]
CMD ["--help"]

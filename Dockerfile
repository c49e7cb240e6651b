# syntax=docker/dockerfile:1
#
# crashgrid container image: `docker build -t REGISTRY/crashgrid:TAG .` from the repository root
# (BuildKit, the default builder of Docker >= 23). The image runs `crashgrid serve` as the
# non-root user 65532 on a read-only root filesystem; every setting comes from CRASHGRID_*
# environment variables (deploy/kubernetes/base/deployment.yaml, docs/kubernetes.md).

# Rust toolchain of the build. The workspace needs >= 1.89 (rust-version in Cargo.toml); the
# default is the toolchain the project is developed and tested with.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Sources only (.dockerignore keeps target/, .git and node_modules out of the context).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# Cache mounts keep the crates.io downloads and the build directory between builds; the binary
# is copied out of the cached target directory in the same step. --locked: exactly Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p crashgrid \
    && install -D -m 0755 target/release/crashgrid /out/crashgrid

# glibc, libgcc_s and libstdc++ of Debian 12, the same as the build stage's (the binary links
# libstdc++ for the C++ demangler); no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/crashgrid /usr/local/bin/crashgrid
ENV PATH=/usr/local/bin:/usr/bin:/bin
# The distroless "nonroot" user; Kubernetes runs it as runAsUser 65532 too.
USER 65532:65532
# 8080: ingest API, dashboard, WebSocket, /metrics, /healthz, /readyz. 7946: pod-to-pod RPC.
EXPOSE 8080 7946
ENTRYPOINT ["crashgrid", "serve"]

# Container image for oauth-token-operator.
#
#   docker build -t oauth-token-operator:0.1.0 .
#
# Stage 1 builds a release binary; stage 2 is distroless (glibc, CA
# certificates, no shell, no package manager) and runs as the image's nonroot
# user (65532), matching the chart's pod security context. The binary needs no
# writable filesystem, so the chart mounts the root read-only.
# (This file has not been built on the development machine, which has no
# container engine; the same cargo command is what CI compiles and tests.
# CI builds the image with scripts/image instead, and a test,
# tests/integration/image.rs, fails when the two disagree on the user, the
# entrypoint, the command, the exposed ports or the binary's path.)

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits reuse the cached layer.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin oauth-token-operator \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin oauth-token-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/oauth-token-operator /usr/local/bin/oauth-token-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/oauth-token-operator"]
CMD ["run"]

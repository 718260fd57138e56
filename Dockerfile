# Puente in a container: a Rust builder stage and a slim runtime stage that holds only the
# binary. Build and run commands: docs/operations.md, "Docker".
#
# The build context leaves .git out (.dockerignore), so pass the commit for `puente --version`:
#   docker build --build-arg PUENTE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t puente .
# Without it the version says "commit unknown".

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Read by build.rs; must look like a commit (hex, optionally -dirty) or be empty.
ARG PUENTE_GIT_COMMIT=
# --locked: exactly the dependency versions of Cargo.lock, as CI tests them. The protobuf
# contract is compiled in pure Rust, so no protoc is needed.
RUN cargo build --release --locked --bin puente \
    && install -m 0755 target/release/puente /usr/local/bin/puente

# Same Debian release as the builder, so the glibc the binary was linked against is there.
FROM debian:bookworm-slim
# Fixed ids, so a key file mounted from the host can be made readable to this user alone
# (chgrp 10001, mode 0640).
RUN groupadd --system --gid 10001 puente \
    && useradd --system --uid 10001 --gid puente --home-dir /var/lib/puente \
        --shell /usr/sbin/nologin puente \
    && install -d -o puente -g puente -m 0700 /var/lib/puente
COPY --from=builder /usr/local/bin/puente /usr/local/bin/puente

# The store, commit journal, audit log signing key and persisted CRLs: keep them on a volume.
VOLUME ["/var/lib/puente"]
# Configuration and key material (server.pem, server.key, ca.pem, and the data keyring
# data.keys that seals message bodies: never on the data volume) are mounted read-only at
# /etc/puente; puente.toml must set listen = "0.0.0.0:50051" (the default listens on
# 127.0.0.1 only), data_dir = "/var/lib/puente" and data_key = "/etc/puente/data.keys".
WORKDIR /var/lib/puente
USER puente
EXPOSE 50051
# SIGTERM drains (streams end, calls in flight finish, the store is closed); give it more than
# drain_timeout_ms with `docker stop -t 30` or `docker run --stop-timeout 30`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/puente"]
CMD ["serve", "--config", "/etc/puente/puente.toml"]

# syntax=docker/dockerfile:1.7
# Two images from one build: `--target app` (the bundled graceful HTTP app) and
# `--target operator` (the GracefulService controller). Both run as non-root on distroless.
#
#   docker build --target app      -t ghcr.io/graceful-dev/graceful-app:0.1.0 .
#   docker build --target operator -t ghcr.io/graceful-dev/graceful-operator:0.1.0 .

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries are copied out of
# the cache mount so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p graceful-app -p graceful-operator \
 && mkdir -p /out \
 && cp target/release/graceful-app target/release/graceful-drain-proxy \
       target/release/graceful-operator /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS app
COPY --from=build /out/graceful-app /usr/local/bin/graceful-app
# The drain proxy rides in the app's image: shutdown.mode Sidecar runs it as a native sidecar
# with `command: [/usr/local/bin/graceful-drain-proxy]` (its ports come from the operator).
COPY --from=build /out/graceful-drain-proxy /usr/local/bin/graceful-drain-proxy
USER 65532:65532
# 8080: main listener (the Service's port). 9090: admin listener (preStop, probes, metrics).
EXPOSE 8080 9090
# JSON logs in production; `--log-format text` for reading by eye.
ENV GRACEFUL_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/graceful-app"]

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/graceful-operator /usr/local/bin/graceful-operator
USER 65532:65532
# 8080: /metrics. 8081: /healthz, /livez, /readyz.
EXPOSE 8080 8081
ENV GRACEFUL_OPERATOR_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/graceful-operator"]

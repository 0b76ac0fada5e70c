# The Guild daemon in a container: `docker build -t guild . && docker run -p 8480:8480 -e GUILD_TOKEN=... guild`
# With no config it serves the embedded example tools; mount a config at /etc/guild/guild.toml
# and pass `--config /etc/guild/guild.toml` (or set GUILD_CONFIG) for your own.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release --locked --bin guild

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/guild --create-home guild
COPY --from=build /src/target/release/guild /usr/local/bin/guild
USER guild
ENV GUILD_HOME=/var/lib/guild \
    GUILD_LISTEN=0.0.0.0:8480
VOLUME ["/var/lib/guild"]
EXPOSE 8480
# Ready means: not draining, the audit writer alive, the store reachable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8480/readyz || exit 1
# SIGTERM drains runs before exit; give `docker stop` time: `docker stop -t 45`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/guild", "serve"]

# Multi-stage build of both binaries; the runtime image holds them, psql (for scripts/ and
# the ops scripts) and curl (for health checks).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY db ./db
COPY service ./service
COPY worker ./worker
COPY bench ./bench
COPY tests ./tests
COPY schema.graphql ./
RUN cargo build --release --locked --bin reviews-api --bin reviews-worker

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl postgresql-client \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home reviews
COPY --from=build /src/target/release/reviews-api /src/target/release/reviews-worker /usr/local/bin/
COPY scripts /opt/reviews/scripts
COPY db/migrations /opt/reviews/db/migrations
COPY db/ledger.sql /opt/reviews/db/ledger.sql
USER 10001
# Production unless told otherwise: no GraphiQL, no introspection, tokens with issuer and
# audience (scripts/dev sets development explicitly).
ENV API_ADDR=0.0.0.0:3000 LOG_FORMAT=json APP_ENV=production
EXPOSE 3000 9101
CMD ["reviews-api", "serve"]

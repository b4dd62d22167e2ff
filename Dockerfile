# The supplystream binary, for docker-compose.yml.
FROM rust:1.90-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin supplystream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/supplystream /usr/local/bin/supplystream
ENTRYPOINT ["supplystream"]

# A static binary on a distroless base: non-root, no shell. Our build machines have no Docker
# engine, so this file is kept minimal and is not built by `make test`; the binary it packages is
# the same `bootstrap-token-operator` the integration tests run.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
COPY benches ./benches
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin bootstrap-token-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/bootstrap-token-operator /bootstrap-token-operator
USER 65532:65532
EXPOSE 6882 8080
ENTRYPOINT ["/bootstrap-token-operator"]
CMD ["run"]

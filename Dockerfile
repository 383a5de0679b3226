# The perturb command line with the shipped models and data, for cluster jobs
# (deploy/kubernetes/eval-indexed-job.yaml). Build from the repository's root:
#
#   docker build -t perturb:0.1.0 .
#
# The build needs crates.io (cargo fetches the locked dependencies); the image needs nothing.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin perturb

FROM debian:bookworm-slim
COPY --from=build /src/target/release/perturb /usr/local/bin/perturb
COPY models /opt/perturb/models
COPY data /opt/perturb/data
COPY assets /opt/perturb/assets
# where perturb finds models/, data/ and assets/ (checked against the compiled-in manifests)
ENV PERTURB_HOME=/opt/perturb
ENTRYPOINT ["perturb"]

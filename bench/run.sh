#!/usr/bin/env bash
# Builds and runs mam-bench; the root `make bench` calls this. Arguments are passed
# through (e.g. `bench/run.sh --quick`, `bench/run.sh --configs stock-sql,native`).
# Results go to bench/results/<timestamp>.{md,json} and bench/results/latest.md.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo build --release --manifest-path "$here/Cargo.toml"
exec "$here/target/release/mam-bench" "$@"

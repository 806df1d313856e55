#!/usr/bin/env bash
# SQL benchmark: neurod's SQL engine next to DuckDB on the same stored Parquet files (one hour of
# 384-channel spikes, NEUROD_SQL_BENCH_RAW_S seconds of raw AP samples; made once and cached in
# NEUROD_SQL_BENCH_DIR, default $CARGO_TARGET_DIR/sql-bench-data). Installs duckdb and pyarrow
# into the peers' virtualenv when missing, then runs `cargo bench -p neurod --bench sql` and the
# Flight delivery delay (`--bench flight_latency`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
peers="${NEUROD_PEERS:-$HOME/.cache/neurod/peers}"
[ -x "$peers/bin/python" ] || python3 -m venv "$peers"
"$peers/bin/python" -c "import duckdb, pyarrow" 2>/dev/null || "$peers/bin/pip" install --quiet duckdb pyarrow
export NEUROD_PYTHON="$peers/bin/python"
cargo bench -p neurod --bench sql
# The delay from a batch leaving a transform to a Flight subscriber holding it (target p99 < 1 ms).
cargo bench -p neurod --bench flight_latency

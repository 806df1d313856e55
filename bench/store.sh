#!/usr/bin/env bash
# Ingest -> store benchmark with its peers: installs zstd and flac (apt) and mtscomp (pip, into
# the peers' virtualenv) when missing, then runs `cargo bench -p pipelines --bench ingest_store`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
peers="${NEUROD_PEERS:-$HOME/.cache/neurod/peers}"
if ! command -v zstd >/dev/null || ! command -v flac >/dev/null; then
  apt-get update -qq && apt-get install -y -qq zstd flac
fi
[ -x "$peers/bin/python" ] || python3 -m venv "$peers"
"$peers/bin/python" -c "import mtscomp" 2>/dev/null || "$peers/bin/pip" install --quiet mtscomp
export NEUROD_PYTHON="$peers/bin/python"
cargo bench -p pipelines --bench ingest_store

#!/usr/bin/env bash
# Spike detection benchmark: the CPU chain's throughput on one core against SpikeInterface's on the
# same ground-truth file, probes sustained in real time on all cores, latency of 1 ms chunks, and
# spike rates on the real 16-channel Open Ephys recording. Where a Vulkan adapter exists (a GPU,
# or Mesa's lavapipe), the GPU chain gets the same throughput and latency rows.
#
# Needs the peers' Python (numpy, scipy, spikeinterface, pyarrow) for the ground truth and the
# SpikeInterface row; without it the simulated rig's probe is used and that row is left out.
# Env: NEUROD_BENCH_SECONDS (default 10), NEUROD_BENCH_MAX_PROBES (default 64).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
peers="${NEUROD_PEERS:-$HOME/.cache/neurod/peers}"
if [ -x "$peers/bin/python" ] && "$peers/bin/python" -c "import spikeinterface, pyarrow" 2>/dev/null; then
  export NEUROD_PYTHON="$peers/bin/python"
else
  echo "NOTE: no peers' Python at $peers (scripts/test.sh sets it up): simulated data, no SpikeInterface row" >&2
fi
if command -v vulkaninfo >/dev/null; then
  vulkaninfo --summary 2>/dev/null | grep -E "deviceName|deviceType" || true
fi
cargo bench -p pipelines --bench spike_detect

#!/usr/bin/env bash
# TEB benchmarks (issue 8): decoding latency and training time per epoch, for a 384-column
# source, L = 16, hidden 128.
# - `teb_decode`: from a bin's close to its UDP record received (`emit_to`, loopback), p50 / p99 /
#   p99.9 / max, through the transform and for the kernel step alone, on the CPU twin and, where a
#   Vulkan adapter exists, the GPU (lavapipe counts and is labelled software: no GPU figure).
#   Pinned to one core. Target: p99 under 1 ms on the CPU.
# - `teb_train`: seconds per epoch of each training stage (candle, CPU).
#
# Env: NEUROD_BENCH_PROFILE (default `bench`, i.e. release; `dev` on a slow machine where a
# release build takes too long: dependencies are optimised there, our code at opt-level 1),
# NEUROD_BENCH_BINS / NEUROD_BENCH_WARMUP / NEUROD_BENCH_SOFTWARE_BINS (teb_decode),
# NEUROD_BENCH_EPOCHS (teb_train; the bins of both: NEUROD_BENCH_TRAIN_BINS, default 30,000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
profile="${NEUROD_BENCH_PROFILE:-bench}"
if command -v vulkaninfo >/dev/null; then
  vulkaninfo --summary 2>/dev/null | grep -E "deviceName|deviceType" || true
fi
cargo bench --profile "$profile" -p pipelines --bench teb_decode
NEUROD_BENCH_BINS="${NEUROD_BENCH_TRAIN_BINS:-30000}" \
  cargo bench --profile "$profile" -p pipelines --bench teb_train

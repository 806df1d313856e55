#!/usr/bin/env bash
# One run on a machine with a hardware GPU (issue 8): the wgpu paths against their CPU twins,
# with the card's name, from a fresh checkout. Needs cargo (with the crates fetched, or network)
# and a Vulkan driver. Steps, each recorded with its exit status and time; a failed step is
# written down and the next one runs:
#   0. the machine: `vulkaninfo --summary` (or nvidia-smi), else the adapter wgpu finds (step 3)
#   1. build, release: the kernels' tests and the two benches (not the daemon)
#   2. `NEUROD_REQUIRE_GPU=1 cargo test --release -p kernels`: GPU vs CPU twin (TEB 1,000 steps
#      within 1e-4, the spike chain, ROI traces), failing if no adapter opens
#   3. `cargo bench -p pipelines --bench teb_decode`: bin close → UDP record, CPU and GPU rows
#   4. `cargo bench -p pipelines --bench spike_detect` with NEUROD_BENCH_SECONDS=5 (default here)
# Everything goes to stdout and to $OUT/gpu-results.md when OUT is set (else ./gpu-results.md).
#
# Usage: bench/gpu.sh [build|run|all]   (default all)
# Time: the build takes ~5-8 min on 16 cores from nothing; steps 2-4 ~3-4 min on a hardware GPU
# (each capped by NEUROD_GPU_STEP_TIMEOUT, default 150 s; step 4 gets 200 s). Where one command
# may run at most 10 minutes, run `bench/gpu.sh build` first, then `bench/gpu.sh run` in the same
# checkout (the build stays in ./target, ignored by git).
# Env: CARGO_TARGET_DIR (default ./target), NEUROD_BENCH_SECONDS (spike_detect, default 5),
# NEUROD_BENCH_BINS (teb_decode, default 20,000).
set -euo pipefail
cd "$(dirname "$0")/.."
phase="${1:-all}"
case "$phase" in build | run | all) ;; *)
  echo "usage: bench/gpu.sh [build|run|all]" >&2
  exit 2
  ;;
esac
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export NEUROD_BENCH_SECONDS="${NEUROD_BENCH_SECONDS:-5}"
step_timeout="${NEUROD_GPU_STEP_TIMEOUT:-150}"
out_dir="${OUT:-$PWD}"
mkdir -p "$out_dir"
results="$out_dir/gpu-results.md"
failures=()

say() { printf '%s\n' "$*" | tee -a "$results"; }

# step NAME TIMEOUT_S COMMAND...: runs it, output to stdout and the results file; never exits.
step() {
  local name="$1" limit="$2" start rc rcfile
  shift 2
  say ""
  say "## $name"
  say ""
  say "\`$*\`"
  say ""
  start=$(date +%s)
  set +e
  rcfile=$(mktemp)
  { echo '```'; timeout "$limit" "$@" 2>&1; echo "$?" >"$rcfile"; echo '```'; } | tee -a "$results"
  rc=$(cat "$rcfile" 2>/dev/null || echo 1)
  rm -f "$rcfile"
  set -e
  say ""
  if [ "$rc" = 0 ]; then
    say "$name: ok in $(($(date +%s) - start)) s"
  else
    [ "$rc" = 124 ] && rc="124 (timed out after ${limit} s)"
    say "$name: FAILED, exit $rc, after $(($(date +%s) - start)) s"
    failures+=("$name")
  fi
}

say "# bench/gpu.sh ($phase), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say ""
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(uname -srm); $(nproc) cores"
# A driver the loader does not find by itself (NVIDIA containers keep it here).
nv_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nv_icd" ]; then
  export VK_DRIVER_FILES="$nv_icd"
  say "VK_DRIVER_FILES=$nv_icd"
fi
if ! ldconfig -p 2>/dev/null | grep -q libvulkan; then
  say "WARNING: no libvulkan in the loader's cache: wgpu will find no Vulkan adapter"
fi
if command -v vulkaninfo >/dev/null; then
  step "0. Vulkan devices" 30 bash -c "vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|deviceType|driverName|apiVersion'"
elif command -v nvidia-smi >/dev/null; then
  step "0. GPU (nvidia-smi; no vulkaninfo: the adapter wgpu takes is printed by step 3)" 30 nvidia-smi -L
else
  say "no vulkaninfo, no nvidia-smi: the adapter wgpu takes is printed by step 3"
fi

if ! command -v cargo >/dev/null; then
  say "no cargo on PATH: nothing can be built"
  exit 1
fi
# Without network, use the crates already fetched.
if ! timeout 60 cargo fetch --locked >/dev/null 2>&1; then
  export CARGO_NET_OFFLINE=true
  say "cargo fetch failed (no network?): building offline from the local crate cache"
fi

if [ "$phase" != run ]; then
  step "1a. build: kernels tests (release)" 600 cargo test --release -p kernels --no-run
  step "1b. build: teb_decode and spike_detect benches (release)" 600 \
    cargo bench -p pipelines --bench teb_decode --bench spike_detect --no-run
fi
if [ "$phase" != build ]; then
  step "2. kernels: GPU vs CPU twins (NEUROD_REQUIRE_GPU=1)" "$step_timeout" \
    env NEUROD_REQUIRE_GPU=1 cargo test --release -p kernels
  step "3. teb_decode latency (CPU twin and GPU)" "$step_timeout" \
    cargo bench -p pipelines --bench teb_decode
  step "4. spike detection (NEUROD_BENCH_SECONDS=$NEUROD_BENCH_SECONDS)" 200 \
    cargo bench -p pipelines --bench spike_detect
fi

say ""
if [ ${#failures[@]} -eq 0 ]; then
  say "all steps ok; results in $results"
else
  say "FAILED steps: $(printf "[%s] " "${failures[@]}"); results in $results"
  exit 1
fi

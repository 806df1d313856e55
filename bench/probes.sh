#!/usr/bin/env bash
# Probes sustained in real time by the daemon itself, as a user runs it: the release binary with
# the simulated rig's `probes = N` at `pace = "realtime"` for a given time, `spike_detect` → a
# store of the spikes (with NEUROD_PROBES_RAW=1 the raw probes are stored too). For each N it
# prints the rows dropped on every edge (`neurod_component_dropped_rows_total`, sampled each
# second: when drops happened and how many), the source's largest lag, the cores used and the
# peak resident memory. Zero dropped rows everywhere is the target.
#
# Usage: bench/probes.sh [N ...]   (default: 4 8 16)
# Env: NEUROD_PROBES_SECONDS (default 15), NEUROD_PROBES_RAW (0), NEUROD_BIN (the release binary,
# built if unset), NEUROD_PROBES_TASKSET (e.g. "0,1": run pinned to those cores).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${NEUROD_PROBES_SECONDS:-15}"
raw="${NEUROD_PROBES_RAW:-0}"
if [ -z "${NEUROD_BIN:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
  cargo build --release -q -p neurod
  NEUROD_BIN="$CARGO_TARGET_DIR/release/neurod"
fi
pin=()
if [ -n "${NEUROD_PROBES_TASKSET:-}" ]; then pin=(taskset -c "$NEUROD_PROBES_TASKSET"); fi
probes_list=("$@")
[ ${#probes_list[@]} -gt 0 ] || probes_list=(4 8 16)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

metric_sum() { # text, metric name, component id -> the value (0 if absent)
  printf '%s\n' "$1" | awk -v m="$2" -v id="$3" '
    index($0, m "{") == 1 && index($0, "component_id=\"" id "\"") { v = $NF }
    END { print (v == "" ? 0 : v) }'
}

printf '%-6s %-8s %-14s %-14s %-14s %-10s %-8s %-10s\n' probes seconds dropped:spikes dropped:store first_drop_s max_lag_s cores peak_rss_mb
for n in "${probes_list[@]}"; do
  port=$((20000 + RANDOM % 20000))
  stored='"spikes"'
  [ "$raw" = 1 ] && stored='"rig", "spikes"'
  cat > "$work/probes.toml" <<EOF
[daemon]
data_dir = "$work/data-$n"
listen = "127.0.0.1:$port"

[sources.rig]
type = "simulated"
seed = 1
probes = $n
duration_s = $seconds
pace = "realtime"

[transforms.spikes]
type = "spike_detect"
inputs = ["rig"]
backend = "cpu"

[sinks.store]
type = "store"
inputs = [$stored]
EOF
  "${pin[@]}" /usr/bin/time -f '%e %U %S %M' -o "$work/time" \
    "$NEUROD_BIN" run --config "$work/probes.toml" > "$work/log-$n" 2>&1 &
  pid=$!
  first_drop="-"
  max_lag=0
  drop_spikes=0
  drop_store=0
  t=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    t=$((t + 1))
    text="$(curl -s --max-time 1 "http://127.0.0.1:$port/metrics" || true)"
    [ -n "$text" ] || continue
    drop_spikes="$(metric_sum "$text" neurod_component_dropped_rows_total spikes)"
    drop_store="$(metric_sum "$text" neurod_component_dropped_rows_total store)"
    lag="$(metric_sum "$text" neurod_source_lag_seconds rig)"
    max_lag="$(awk -v a="$max_lag" -v b="$lag" 'BEGIN { print (b > a ? b : a) }')"
    if [ "$first_drop" = "-" ] && awk -v a="$drop_spikes" -v b="$drop_store" 'BEGIN { exit !(a + b > 0) }'; then
      first_drop="$t"
    fi
    if [ "${NEUROD_PROBES_TRACE:-0}" = 1 ]; then
      echo "  t=${t}s dropped spikes=$drop_spikes store=$drop_store lag=$lag" >&2
    fi
  done
  wait "$pid" || { echo "neurod failed with $n probes:" >&2; tail -20 "$work/log-$n" >&2; }
  read -r elapsed user sys rss_kb < "$work/time"
  cores="$(awk -v e="$elapsed" -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", (u + s) / e }')"
  printf '%-6s %-8s %-14s %-14s %-14s %-10s %-8s %-10s\n' "$n" "$seconds" "$drop_spikes" "$drop_store" \
    "$first_drop" "$max_lag" "$cores" "$((rss_kb / 1024))"
done

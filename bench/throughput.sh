#!/usr/bin/env bash
# Throughput as a user gets it, with the peers side by side, in one run (README "Throughput"):
#  1. end to end on one core, start-up included: `neurod run` of a SpikeGLX ground-truth
#     recording (groundtruth.py, 384 channels) at pace = "max" -> spike_detect -> a store of the
#     spikes, with the CPU backend and with the default backend (`auto`, with Mesa's lavapipe
#     installed when it is), next to SpikeInterface's chain on the same file (score_spikes.py
#     --peer, also pinned to one core), with each one's recall and precision;
#  2. raw store on one core (best of 3, each after a `sync`): `neurod run` of the same file -> a
#     store of all 385 channels, next
#     to pyarrow writing the same samples to Parquet at its best setting (delta, zstd 1), and the
#     ratio on that file and on the real 16-channel Open Ephys recording next to `flac --best`
#     and `mtscomp`; then that stored session replayed (`replay` of its Parquet, pace = "max") ->
#     spike_detect -> store on one core, the way a lab reprocesses a session; and the same
#     recording pushed by a pyarrow client over TCP (arrow_ipc -> spike_detect -> store);
#  3. probes sustained in real time by the daemon on all cores (bench/probes.sh: the simulated
#     rig's probes = N at pace = "realtime"), detection and raw storage (8) and detection only
#     (16), dropped rows on every edge;
#  every row with its peak resident memory.
#
# Needs the peers' virtualenv (scripts/test.sh makes it); installs flac (apt) and mtscomp (pip)
# when missing. Env: NEUROD_THROUGHPUT_SECONDS (recording length, default 30),
# NEUROD_PROBES_SECONDS (default 120), NEUROD_THROUGHPUT_PROBES=0 (leave out part 3).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
peers="${NEUROD_PEERS:-$HOME/.cache/neurod/peers}"
py="$peers/bin/python"
tools="$root/../shared/tools"
seconds="${NEUROD_THROUGHPUT_SECONDS:-30}"
export NEUROD_PROBES_SECONDS="${NEUROD_PROBES_SECONDS:-120}"
"$py" -c "import spikeinterface, pyarrow" || { echo "no peers' Python at $peers" >&2; exit 1; }
command -v flac >/dev/null || { apt-get update -qq && apt-get install -y -qq flac; }
"$py" -c "import mtscomp" 2>/dev/null || "$peers/bin/pip" install --quiet mtscomp
cargo build --release -q -p neurod
bin="$CARGO_TARGET_DIR/release/neurod"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "# neurod throughput, $(date -u +%F), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
"$py" "$tools/groundtruth.py" "$work/gt" --seconds "$seconds" > /dev/null
recording="$work/gt/$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['bin'])" "$work/gt/info.json")"
bin_bytes="$(stat -c %s "$recording")"
channels="$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]))['saved_channels'])" "$work/gt/info.json")"

# `neurod run` of `$1` (a config) pinned to core 0: prints "wall_s peak_rss_mb".
run_pinned() {
  /usr/bin/time -f '%e %M' -o "$work/time" taskset -c 0 "$bin" run --config "$1" > "$work/log" 2>&1 ||
    { echo "neurod failed:" >&2; tail -20 "$work/log" >&2; exit 1; }
  awk '{ printf "%s %d\n", $1, $2 / 1024 }' "$work/time"
}

# Fails the script, with the log `$2`, unless process `$1` still runs.
alive_or_fail() {
  kill -0 "$1" 2> /dev/null || { echo "neurod exited:" >&2; tail -20 "$2" >&2; exit 1; }
}

# The [daemon] table of a run whose data goes to `$1/data`.
header() {
  cat <<EOF
[daemon]
data_dir = "$1/data"
listen = "127.0.0.1:$((20000 + RANDOM % 20000))"
EOF
}

# A config: the recording at pace = "max" into `$2/data`, then `$1` (the rest of the topology).
config() {
  header "$2"
  cat <<EOF

[sources.probe]
type = "spikeglx"
path = "$recording"
pace = "max"

$1
EOF
}

# spike_detect with backend `$2` on input `$1`, its spikes into a store.
detect_and_store() {
  cat <<EOF
[transforms.spikes]
type = "spike_detect"
inputs = ["$1"]
backend = "$2"

[sinks.store]
type = "store"
inputs = ["spikes"]
EOF
}

# The best of 3 runs of `$1/neurod.toml` (the machine is shared) into `wall` and `rss`, their
# mean into `mean`; with `$2` = sync, each after a `sync` (the previous run's writeback must not
# land in this one).
best_of_3() {
  wall=999999
  local sum=0
  for _ in 1 2 3; do
    rm -rf "$1/data"
    [ "${2:-}" != sync ] || sync
    read -r w r < <(run_pinned "$1/neurod.toml")
    if awk -v a="$w" -v b="$wall" 'BEGIN { exit !(a < b) }'; then wall="$w" rss="$r"; fi
    sum="$(awk -v a="$sum" -v b="$w" 'BEGIN { print a + b }')"
  done
  mean="$(awk -v s="$sum" 'BEGIN { printf "%.2f", s / 3 }')"
}

# The spikes stored under `$1/data/store` scored against the ground truth: `recall`, `precision`.
score() {
  local scores
  scores="$("$py" "$tools/score_spikes.py" "$work/gt" "$1/data/store" | sed -n 's/^detections //p')"
  recall="$("$py" -c "import json,sys; print(json.loads(sys.argv[1])['recall'])" "$scores")"
  precision="$("$py" -c "import json,sys; print(json.loads(sys.argv[1])['precision'])" "$scores")"
}

# `$seconds` of recording over `$1` s of wall time.
realtime_x() { awk -v s="$seconds" -v w="$1" 'BEGIN { print s / w }'; }

parquet_bytes() { find "$1" -name '*.parquet' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }

echo
echo "## 1. spike detection -> store, end to end, one core, start-up included ($seconds s, 384 channels; best of 3)"
echo "| chain | wall s | x real time | mean of 3, s | recall | precision | peak RSS MB |"
echo "|---|---|---|---|---|---|---|"
for backend in cpu auto; do
  dir="$work/detect-$backend"
  mkdir -p "$dir"
  config "$(detect_and_store probe "$backend")" "$dir" > "$dir/neurod.toml"
  # (The first run also loads the Vulkan driver.)
  best_of_3 "$dir"
  [ "$backend" != cpu ] || cpu_wall="$wall"
  chosen="$(grep -o 'backend=[^ ]*' "$work/log" | head -1 | tr -d '"' || true)"
  score "$dir"
  printf '| neurod, backend = "%s" %s | %.2f | %.1f | %s | %s | %s | %s |\n' "$backend" "${chosen:+($chosen)}" \
    "$wall" "$(realtime_x "$wall")" "$mean" "$recall" "$precision" "$rss"
done
peer="$(/usr/bin/time -f '%M' -o "$work/time-peer" taskset -c 0 "$py" "$tools/score_spikes.py" "$work/gt" --peer 2>/dev/null | sed -n 's/^spikeinterface //p')"
"$py" - "$peer" "$(cat "$work/time-peer")" "$cpu_wall" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"| SpikeInterface (bandpass, CMR, locally_exclusive; n_jobs=1, numba warmed) | {r['wall_s']:.2f} "
      f"| {r['realtime_x']:.1f} | (one run) | {r['recall']} | {r['precision']} | {int(sys.argv[2]) // 1024} |")
print(f"\nneurod (cpu, best of 3) against SpikeInterface in this run: {r['wall_s'] / float(sys.argv[3]):.1f}x its speed")
EOF

echo
echo "## 2. raw store, one core: all 385 channels (best of 3)"
echo "| writer | wall s | x real time | MB/s | ratio (.bin / Parquet) | peak RSS MB |"
echo "|---|---|---|---|---|---|"
dir="$work/raw"
mkdir -p "$dir"
config "[sinks.store]
type = \"store\"
inputs = [\"probe\"]" "$dir" > "$dir/neurod.toml"
best_of_3 "$dir" sync
stored="$(parquet_bytes "$dir/data")"
awk -v s="$seconds" -v w="$wall" -v b="$bin_bytes" -v p="$stored" -v r="$rss" \
  'BEGIN { printf "| neurod run (spikeglx -> store, start-up and conversion included) | %.2f | %.1f | %.0f | %.3f | %s |\n", w, s / w, b / 1e6 / w, b / p, r }'
for _ in 1 2 3; do
sync
/usr/bin/time -f '%M' -o "$work/time-pa" taskset -c 0 "$py" - "$recording" "$work/pa.parquet" > "$work/pa" <<'EOF'
import sys, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq
t0 = time.perf_counter()
d = np.fromfile(sys.argv[1], dtype="<i2").reshape(-1, 385)
cols = {"sample_index": pa.array(np.arange(len(d), dtype=np.int64))}
cols.update({f"c{i}": pa.array(np.ascontiguousarray(d[:, i])) for i in range(385)})
t = pa.table(cols)
pq.write_table(t, sys.argv[2], compression="zstd", compression_level=1, use_dictionary=False,
               column_encoding={c: "DELTA_BINARY_PACKED" for c in t.column_names}, data_page_size=1 << 20)
print(time.perf_counter() - t0, pa.__version__)
EOF
cat "$work/pa" >> "$work/pa-runs"
done
sort -n "$work/pa-runs" | head -1 > "$work/pa"
read -r pa_wall pa_version < "$work/pa"
awk -v s="$seconds" -v w="$pa_wall" -v b="$bin_bytes" -v p="$(stat -c %s "$work/pa.parquet")" -v r="$(($(cat "$work/time-pa") / 1024))" -v v="$pa_version" \
  'BEGIN { printf "| pyarrow %s (read, table, write_table: delta, zstd 1, no dictionary, 1 MiB pages) | %.2f | %.1f | %.0f | %.3f | %s |\n", v, w, s / w, b / 1e6 / w, b / p, r }'

echo
echo "## 2b. the stored session again: replay (Parquet) -> spike_detect -> store, one core (best of 3)"
echo "| chain | wall s | x real time | recall | precision | peak RSS MB |"
echo "|---|---|---|---|---|---|"
dir="$work/replay"
mkdir -p "$dir"
{ header "$dir"; cat <<EOF

[sources.again]
type = "replay"
path = "$work/raw/data"
pace = "max"

EOF
detect_and_store again cpu; } > "$dir/neurod.toml"
best_of_3 "$dir"
score "$dir"
printf '| neurod, replay of the raw store (Parquet, delta + zstd) -> spike_detect (cpu) -> store | %.2f | %.1f | %s | %s | %s |\n' \
  "$wall" "$(realtime_x "$wall")" "$recall" "$precision" "$rss"

echo
echo "## 2c. ratio on the real 16-channel Open Ephys recording (40 kHz)"
oe="$root/../shared/data/openephys-16ch-40khz/experiment1/recording1"
dat="$oe/continuous/File_Reader-100.example_data/continuous.dat"
dat_bytes="$(stat -c %s "$dat")"
dir="$work/oe"
mkdir -p "$dir"
{ header "$dir"; cat <<EOF

[sources.oe]
type = "openephys"
path = "$oe"
pace = "max"

[sinks.store]
type = "store"
inputs = ["oe"]
EOF
} > "$dir/neurod.toml"
run_pinned "$dir/neurod.toml" > /dev/null
"$py" - "$dat" "$work" 16 40000 > "$work/oe-peers" 2>/dev/null <<'EOF'
import sys, os, subprocess, numpy as np, mtscomp
dat, work, n, rate = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
d = np.fromfile(dat, dtype="<i2").reshape(-1, n)
flac = 0
for k in range(0, n, 8):  # FLAC holds at most 8 channels
    raw = os.path.join(work, f"part{k}.raw")
    np.ascontiguousarray(d[:, k:k + 8]).tofile(raw)
    out = raw + ".flac"
    subprocess.run(["flac", "--best", "--silent", "--force", "--endian=little", "--sign=signed",
                    f"--channels={min(8, n - k)}", "--bps=16", f"--sample-rate={rate}", "-o", out, raw],
                   check=True)
    flac += os.path.getsize(out)
mtscomp.compress(dat, os.path.join(work, "oe.cbin"), os.path.join(work, "oe.ch"),
                 sample_rate=float(rate), n_channels=n, dtype="int16")
print(flac, os.path.getsize(os.path.join(work, "oe.cbin")) + os.path.getsize(os.path.join(work, "oe.ch")))
EOF
read -r flac_bytes mts_bytes < "$work/oe-peers"
echo "| method | bytes | ratio (.dat / compressed) |"
echo "|---|---|---|"
for row in "neurod store (Parquet, delta, zstd 1):$(parquet_bytes "$dir/data")" \
           "flac --best (2 x 8 channels):$flac_bytes" "mtscomp (defaults):$mts_bytes"; do
  awk -v name="${row%%:*}" -v b="${row##*:}" -v d="$dat_bytes" 'BEGIN { printf "| %s | %d | %.3f |\n", name, b, d / b }'
done

echo
echo "## 2d. the same recording pushed over TCP: arrow_ipc -> spike_detect -> store, neurod on one core"
echo "A pyarrow client on the other core sends the $seconds s as one Arrow IPC stream of 10 ms batches"
echo "(encoded before the clock starts); timed from its first byte to neurod's exit after every row"
echo "has arrived."
echo "| chain | wall s | x real time | recall | precision | peak RSS MB |"
echo "|---|---|---|---|---|---|"
dir="$work/ipc"
mkdir -p "$dir"
port=$((20000 + RANDOM % 20000))
{ header "$dir"; cat <<EOF

[sources.rig]
type = "arrow_ipc"
address = "127.0.0.1:$port"

EOF
detect_and_store rig cpu; } > "$dir/neurod.toml"
listen="$(sed -n 's/^listen = "\(.*\)"/\1/p' "$dir/neurod.toml")"
rows=$((bin_bytes / (2 * channels)))
/usr/bin/time -f '%e %M' -o "$dir/time" taskset -c 0 "$bin" run --config "$dir/neurod.toml" > "$dir/log" 2>&1 &
daemon=$!
until curl -sf "http://$listen/healthz" > /dev/null; do
  alive_or_fail "$daemon" "$dir/log"
  sleep 0.1
done
taskset -c 1 "$py" - "$recording" "$work/gt" "$port" > "$dir/t0" <<'EOF'
import json, os, socket, sys, time, numpy as np, pyarrow as pa
recording, gt, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
info = json.load(open(os.path.join(gt, "info.json")))
n, ap = info["saved_channels"], info["channels"]  # the AP channels, then sync
d = np.fromfile(recording, dtype="<i2").reshape(-1, n)
xy = np.load(os.path.join(gt, "channel_locations_um.npy"))
fields = [pa.field("sample_index", pa.int64(), nullable=False)]
for ch in range(n):
    meta = ({"neurod.channel_kind": "ap", "neurod.uv_per_bit": repr(info["uv_per_bit"]), "neurod.x_um": str(xy[ch][0]),
             "neurod.y_um": str(xy[ch][1]), "neurod.shank": "0"} if ch < ap else {"neurod.channel_kind": "sync"})
    fields.append(pa.field(f"AP{ch}" if ch < ap else f"SY{ch - ap}", pa.int16(), nullable=False, metadata=meta))
schema = pa.schema(fields, metadata={"neurod.layout": "continuous", "neurod.stream_id": "imec0.ap",
                                     "neurod.stream_kind": "ap", "neurod.sampling_hz": f"{info['sampling_hz']:g}",
                                     "neurod.first_sample": "0"})
batches = []
step = round(info["sampling_hz"] / 100)  # 10 ms batches, as a live rig sends them
for t0 in range(0, len(d), step):
    block = np.ascontiguousarray(d[t0:t0 + step].T)
    cols = [pa.array(np.arange(t0, t0 + block.shape[1], dtype=np.int64))] + [pa.array(c) for c in block]
    batches.append(pa.RecordBatch.from_arrays(cols, schema=schema))
# The whole stream is encoded first, so that the client costs one sendall, not a write per buffer.
sink = pa.BufferOutputStream()
with pa.ipc.new_stream(sink, schema) as writer:
    for b in batches:
        writer.write_batch(b)
payload = sink.getvalue()
sock = socket.create_connection(("127.0.0.1", port))
print(time.time())
sock.sendall(payload)
sock.close()
EOF
# Every row has arrived when the source has sent them all on; then stop and time the drain.
until curl -sf "http://$listen/metrics" | grep -q "^neurod_component_sent_rows_total{component_id=\"rig\"[^}]*} $rows\$"; do
  alive_or_fail "$daemon" "$dir/log"
  sleep 0.02
done
# SIGTERM drains and flushes like Ctrl-C; it goes to neurod, the child of `time` (which ignores
# SIGINT while it waits).
pkill -TERM -P "$daemon"
wait "$daemon" || true
t1="$(date +%s.%N)"
read -r _ ipc_rss < "$dir/time"
score "$dir"
awk -v s="$seconds" -v a="$(cat "$dir/t0")" -v b="$t1" -v r="$ipc_rss" -v re="$recall" -v pr="$precision" \
  'BEGIN { printf "| neurod, arrow_ipc (TCP, pyarrow client) -> spike_detect (cpu) -> store | %.2f | %.1f | %s | %s | %d |\n", b - a, s / (b - a), re, pr, r / 1024 }'

[ "${NEUROD_THROUGHPUT_PROBES:-1}" = 1 ] || exit 0
echo
echo "## 3. probes sustained in real time by the daemon, all cores ($NEUROD_PROBES_SECONDS s)"
echo "detection + raw storage:"
NEUROD_BIN="$bin" NEUROD_PROBES_RAW=1 bench/probes.sh 8
echo "detection only:"
NEUROD_BIN="$bin" NEUROD_PROBES_RAW=0 bench/probes.sh 16

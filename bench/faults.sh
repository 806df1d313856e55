#!/usr/bin/env bash
# The long versions of the fault tests (issue 12) whose short versions run in the test command:
#  - power loss: kill -9 at varying moments (0.3-1.5 s) while segments rotate every 0.25 s and
#    convert to Parquet, NEUROD_KILL_LOOPS times (default 40), each restart resuming the same
#    recording; after every restart no row readable before the kill is lost or repeated, and at
#    the end the store holds the recording exactly, with no segment, temporary or spool file.
# Needs the peers' virtualenv (scripts/test.sh makes it) and ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
export NEUROD_PYTHON="${NEUROD_PYTHON:-$HOME/.cache/neurod/peers/bin/python}"
loops="${NEUROD_KILL_LOOPS:-40}"
echo "# neurod under faults, $(date -u +%F), $(nproc) cores"
echo "| fault | injected | rows lost | rows repeated | wall s |"
echo "|---|---|---|---|---|"
start=$(date +%s)
out="$(NEUROD_KILL_LOOPS="$loops" cargo test -q -p neurod --test lifecycle \
  kill_9_in_a_loop -- --nocapture 2>&1)" || { echo "$out" | tail -40 >&2; exit 1; }
kills="$(echo "$out" | sed -n 's/^\([0-9]*\) kills$/\1/p')"
seed="$(echo "$out" | sed -n 's/^NEUROD_KILL_SEED=//p')"
echo "| kill -9 during rotation and Parquet conversion (seed $seed) | $kills kills | 0 | 0 | $(($(date +%s) - start)) |"

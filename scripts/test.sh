#!/usr/bin/env bash
# Runs every test of neurod. Installs what the tests need when it is missing: Mesa's lavapipe
# (software Vulkan, so every WGSL kernel runs against its CPU twin without a GPU), Chromium (the
# web view's test drives it headless), Prometheus (the Grafana dashboard's queries are run on it)
# and the Python peers (pyarrow, SpikeInterface, scipy... from ../shared/tools/requirements.txt) in a
# virtualenv kept outside the clone so that later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build outputs and the peers' virtualenv live outside the clone, so a fresh clone reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/neurod/target}"
peers="${NEUROD_PEERS:-$HOME/.cache/neurod/peers}"
requirements=../shared/tools/requirements.txt

sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo

# Debian packages the tests need: lavapipe, and Chromium for the web view's browser test.
missing=()
ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || missing+=(mesa-vulkan-drivers)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

# Debian's Prometheus, unpacked under ~/.cache/neurod rather than installed, so that no
# Prometheus service starts on this machine as a side effect of testing.
prometheus="$HOME/.cache/neurod/prometheus"
if ! command -v prometheus >/dev/null 2>&1 && [ ! -x "$prometheus/usr/bin/prometheus" ]; then
  echo "== unpacking Debian's prometheus into $prometheus"
  deb="$(mktemp -d)"
  (cd "$deb" && { apt-get download -qq prometheus 2>/dev/null ||
    { $sudo apt-get update -qq && apt-get download -qq prometheus; }; })
  # dpkg-deb makes the last directory only, and ~/.cache/neurod may not exist yet.
  mkdir -p "$prometheus"
  dpkg-deb -x "$deb"/prometheus_*.deb "$prometheus"
  rm -rf "$deb"
fi

if [ -f "$requirements" ]; then
  stamp="$peers/.requirements"
  if ! cmp -s "$requirements" "$stamp" 2>/dev/null; then
    echo "== installing the Python peers into $peers"
    python3 -m venv "$peers"
    "$peers/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  fi
  export NEUROD_PYTHON="$peers/bin/python"
else
  echo "== $requirements not found: tests that compare with Python peers will say they skip"
fi

echo "== cargo test (target dir $CARGO_TARGET_DIR)"
cargo test --workspace --locked "$@"

#!/usr/bin/env bash
# Installs everything Combo Packet needs on a fresh Debian machine, then builds it.
# Idempotent: every step checks first and skips what is already there.
#
#   COMBO_CACHE   where the PyTorch wheel lives (default ~/.cache/combo-packet); shared by
#                 every clone, so libtorch (about 4.7 GB) is downloaded once per machine.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${COMBO_CACHE:-$HOME/.cache/combo-packet}"
torch_version="2.13.0" # tch 0.26 accepts exactly this libtorch
venv="$cache/torch-$torch_version"

log() { printf '[setup] %s\n' "$*" >&2; }

# System packages: libpcap for the C example, tcpdump to record demo captures, fontconfig
# and a font for the plots of `combo eval` / `combo train` (plotters draws text with them).
missing=()
for pkg in libpcap-dev tcpdump pkg-config libfontconfig1-dev libfreetype-dev fonts-dejavu-core; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# LibTorch from the PyTorch wheel, in a virtual environment outside the clone.
if ! "$venv/bin/python" -W ignore -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" 2>/dev/null; then
    log "installing torch==$torch_version into $venv (about 4.7 GB, once per machine)"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "torch==$torch_version"
fi
torch_dir="$("$venv/bin/python" -W ignore -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
ln -sfn "$torch_dir" "$repo/.libtorch"

log "building (release)"
cd "$repo"
cargo build --release --workspace --quiet
log "ready: target/release/combo and target/release/libcombo_packet.so"

#!/usr/bin/env bash
# GPU check: run on a machine with an NVIDIA GPU (a few minutes after the build).
#  1. the plugin and the CLI really link libtorch_cuda (tch links it only through an explicit
#     --no-as-needed, see build-support/libtorch_link.rs; without it CUDA silently vanishes);
#  2. libtorch sees the device at run time;
#  3. contexts/s of the model on the GPU by N and batch size, against libtorch's own GFLOP/s
#     on the same shapes, in f32 and in mixed precision;
#  4. the demo capture replayed through the .so on the GPU.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
out="${1:-target/gpu-check}"
mkdir -p "$out"

[ -x target/release/combo ] || scripts/setup.sh

echo "== link: libtorch_cuda in the plugin and the CLI"
for binary in target/release/libcombo_packet.so target/release/combo; do
    if ! ldd "$binary" | grep -q 'libtorch_cuda.so'; then
        echo "FAIL: $binary does not link libtorch_cuda.so" >&2
        exit 1
    fi
done
echo ok

echo "== run time: CUDA device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
target/release/combo bench model --device cuda --packets 5 --batches 1 --seconds 0.5 >/dev/null
echo ok

echo "== model throughput on the GPU, f32 and mixed precision (f16 products)"
target/release/combo bench model --device cuda --packets 1,3,5 --batches 1,32,256,1024 \
    --seconds 2 --json "$out/model-cuda.json" | tee "$out/model-cuda.txt"
target/release/combo bench model --device cuda --packets 1,3,5 --batches 1,32,256,1024 \
    --seconds 2 --mixed-precision --json "$out/model-cuda-f16.json" | tee "$out/model-cuda-f16.txt"

echo "== replay on the GPU"
printf '[model]\npath = "%s/models/default.card.toml"\ndevice = "cuda"\nmixed_precision = true\n' \
    "$repo" >"$out/cuda.toml"
target/release/combo replay --no-progress --config "$out/cuda.toml" --policy wait \
    tests/data/demo.pcap >"$out/replay.jsonl" 2>"$out/replay.txt"
grep -q 'on Cuda' "$out/replay.txt" || { echo "FAIL: the engine did not run on CUDA" >&2; exit 1; }
grep -q 'mixed precision on Cuda' "$out/replay.txt" ||
    { echo "FAIL: the engine did not take mixed precision" >&2; exit 1; }
tail -n 6 "$out/replay.txt"
echo "results in $out"

#!/usr/bin/env bash
# The CUDA benchmark on a bare H100/H200 machine of the device tool (no internet). Prepare here first:
#   bash bench/prepare_gpu.sh
# then call the device tool with
#   run(command="bash bench/gpu.sh", carry=["bench/wheels", "bench/comfyui"], timeout_s=600)
# It installs the carried wheels into /tmp/site, builds the full-size fixtures there (tests/fixtures, about 14 GiB
# in /tmp), runs `python -m bench --device cuda --resolution 1024 --views 16` and leaves the JSON, the Markdown table
# and the log under $OUT (bench/out without the device tool). BENCH_CONFIGS picks configurations (default
# t4,quality,speed: the two with targets first); BENCH_LIMIT_S stops the benchmark in time for the files to come
# back (partial results are written after every configuration). The t4 workflow also runs once more with its process
# capped at BENCH_T4_CAP_GIB (15: what a 16 GB T4 leaves ComfyUI) through torch's per-process memory fraction and
# ComfyUI's --reserve-vram, standing in for a T4's memory; the JSON then holds the cost model's figures for this card
# beside the measured ones, which calibrates bench/cost.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for d in bench/wheels bench/comfyui; do
    [ -e "$d" ] || { echo "missing $d: run bash bench/prepare_gpu.sh here and carry it" >&2; exit 2; }
done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    bench/wheels/*.whl || exit 3
export PYTHONPATH=/tmp/site
export COMFYUI_PATH=$PWD/bench/comfyui
export GLIMPSE_FIXTURE_CACHE=/tmp/glimpse-fixtures GLIMPSE_BENCH_MODELS=/tmp/glimpse-models
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
python3 -c "import torch, diffusers; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'diffusers', diffusers.__version__)" || exit 4
name=$(python3 -c "import torch; print(torch.cuda.get_device_name(0).replace('NVIDIA ', '').replace(' ', '-').lower())")
result="$OUT/${name}-$(date -u +%Y-%m-%d).json"
start=$(date +%s)
timeout "${BENCH_LIMIT_S:-540}" python3 -m bench --device cuda --resolution 1024 --views 16 \
    --configs "${BENCH_CONFIGS:-t4,quality,speed}" --t4-vram-cap-gib "${BENCH_T4_CAP_GIB:-15}" --out "$result" \
    2>&1 | tee "$OUT/bench.log"
rc=${PIPESTATUS[0]}
echo "bench exit $rc after $(( $(date +%s) - start )) s; results: $result"
[ -f "${result%.json}.md" ] && cat "${result%.json}.md"
exit "$rc"

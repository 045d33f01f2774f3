#!/usr/bin/env bash
# Run HERE, on the development machine (internet to PyPI), before a device call: puts what the bare GPU machine lacks
# into two git-ignored folders that the call carries (64 MiB limit for the whole transfer):
#   bench/wheels/   Python wheels the GPU image does not have (ComfyUI's av/torchsde/pydantic*, diffusers)
#   bench/comfyui/  a copy of ComfyUI ($COMFYUI_PATH, default ~/ComfyUI) without its tests, API nodes and the
#                   tokenizer data of non-SDXL models
# Then: device run(command="bash bench/gpu.sh", carry=["bench/wheels", "bench/comfyui"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
COMFY=${COMFYUI_PATH:-$HOME/ComfyUI}
[ -f "$COMFY/main.py" ] || { echo "no ComfyUI at $COMFY (set COMFYUI_PATH)" >&2; exit 1; }

rm -rf bench/comfyui && mkdir -p bench/comfyui
(cd "$COMFY" && tar cf - --exclude=./tests --exclude=./tests-unit --exclude=./comfy_api_nodes --exclude=./models \
    --exclude=./custom_nodes --exclude=./input --exclude=./output --exclude=./user --exclude=./temp \
    --exclude='__pycache__' --exclude=./.git .) | tar xf - -C bench/comfyui
find bench/comfyui/comfy/text_encoders -path '*_tokenizer/*' -type f ! -name '*.py' -delete

# Versions as in the development venv (Python 3.12 on the GPU image; KINDS.md lists what it already has).
mkdir -p bench/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d bench/wheels \
    av==18.1.0 diffusers==0.42.1 torchsde==0.2.6 trampoline==0.1.2 importlib_metadata==10.2.0 pydantic==2.14.4 \
    pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pydantic-settings==2.16.3 \
    python-dotenv==1.2.4
du -sh bench/wheels bench/comfyui

"""What the benchmark's parts share: the view set at a size, the workflows and their settings, clocks and memory."""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FOX = REPO / "samples" / "fox"
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GIB = 1024 ** 3

# bench config name -> bundled workflow (workflows/api/glimpse_enhance_<name>.json) and its MemoryPreset preset
CONFIGS = {"t4": "t4_balanced", "speed": "speed", "quality": "quality"}

# node class -> time-split part (the rest of this pack is "ours", anything else "other")
PARTS = {
    "VAEEncode": "vae_encode", "VAEEncodeTiled": "vae_encode", "GlimpseVAEEncode": "vae_encode",
    "SamplerCustomAdvanced": "sampling", "KSamplerAdvanced": "sampling", "KSampler": "sampling",
    "SamplerCustom": "sampling",
    "VAEDecode": "vae_decode", "VAEDecodeTiled": "vae_decode", "GlimpseVAEDecode": "vae_decode",
    "CheckpointLoaderSimple": "loaders", "GlimpseCheckpointLoader": "loaders", "LoraLoaderModelOnly": "loaders",
    "UNETLoader": "loaders", "ControlNetLoader": "loaders", "VAELoader": "loaders",
    "GlimpsePrompt": "text_encode", "CLIPTextEncode": "text_encode",  # CLIP runs inside GlimpsePrompt
}
SPLIT_PARTS = ("vae_encode", "sampling", "vae_decode", "ours", "text_encode", "loaders", "other")
# phases of the executed work: the sampler's own work beside the UNet and ControlNet counts as other
WORK_PHASES = ("vae_encode", "unet", "controlnet", "vae_decode", "ours", "text_encode", "other")


def build_view_set(dst: Path, size: int, views: int = 16, src: Path = FOX) -> Path:
    """The sample set (samples/fox, 16 views) resized to ``size`` px into ``dst``, as a renderer at that size would
    write it: RGBA views, masks, float32 .npz depth (nearest), the same cameras.json. Returns ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for i in range(views):
        stem = f"view_{i:02d}"
        Image.open(src / f"{stem}.png").resize((size, size), Image.BICUBIC).save(dst / f"{stem}.png",
                                                                                   compress_level=1)
        if (src / f"{stem}_mask.png").is_file():
            Image.open(src / f"{stem}_mask.png").resize((size, size), Image.BILINEAR).save(dst / f"{stem}_mask.png")
        d = np.load(src / f"{stem}_depth.npz")["depth"].astype(np.float32)
        rows = (np.arange(size) * d.shape[0] // size)[:, None]
        cols = (np.arange(size) * d.shape[1] // size)[None, :]
        np.savez_compressed(dst / f"{stem}_depth.npz", depth=d[rows, cols])
    cams = json.loads((src / "cameras.json").read_text(encoding="utf-8"))
    if isinstance(cams.get("views"), list):
        cams["views"] = cams["views"][:views]
    (dst / "cameras.json").write_text(json.dumps(cams), encoding="utf-8")
    return dst


def workflow_path(config: str) -> Path:
    return REPO / "workflows" / "api" / f"glimpse_enhance_{config}.json"


def load_workflow(config: str) -> tuple[dict, str]:
    """(API graph, where it came from) of a bundled workflow; until workflows/api/ holds it, the graph the workflow
    builder (tools/build_workflows.py) writes for it."""
    path = workflow_path(config)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), str(path.relative_to(REPO))
    builder = REPO / "tools" / "build_workflows.py"
    if not builder.is_file():
        raise FileNotFoundError(f"no bundled workflow {path} and no tools/build_workflows.py to build it from")
    import importlib.util

    spec = importlib.util.spec_from_file_location("glimpse_build_workflows", builder)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    variant = next(v for v in mod.WORKFLOWS if v.name == f"glimpse_enhance_{config}")
    return mod.api_graph(variant), "tools/build_workflows.py api_graph (workflows/api/ not written yet)"


def nodes_of(workflow: dict, class_types) -> list[str]:
    class_types = (class_types,) if isinstance(class_types, str) else tuple(class_types)
    return [nid for nid, n in workflow.items() if n["class_type"] in class_types]


def settings_of(workflow: dict, config: str):
    """The glimpse Settings the workflow's MemoryPreset stands for (a named preset, or its custom fields)."""
    from glimpse.presets import preset_settings

    ids = nodes_of(workflow, "MemoryPreset")
    if not ids:
        return preset_settings(CONFIGS[config])
    inputs = workflow[ids[0]]["inputs"]
    fields = {k: inputs[k] for k in ("steps", "strength", "controlnet_strength", "resolution", "views_per_chunk",
                                     "tiled_vae", "vae_tile_size", "unet_dtype", "controlnet_size", "cross_view",
                                     "anchor_count", "anchor_neighbours") if k in inputs}
    if "steps" in fields:
        fields["steps"] = int(fields["steps"])
    return preset_settings(inputs.get("preset", CONFIGS[config]), **fields)


def executed_steps(settings) -> int:
    from glimpse.lightning import plan_img2img

    return plan_img2img(settings.steps, settings.strength).executed


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cuda_sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Clock:
    """Accumulates seconds by key around device-synchronised regions."""

    def __init__(self, device: str):
        self.device = device
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, key: str, fn):
        def timed(*args, **kwargs):
            cuda_sync(self.device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                cuda_sync(self.device)
                self.add(key, time.perf_counter() - t0)
        return timed

    def add(self, key: str, seconds: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + seconds
        self.calls[key] = self.calls.get(key, 0) + 1

    def reset(self) -> None:
        self.seconds, self.calls = {}, {}


def gpu_name(device: str) -> str:
    if device != "cuda":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(0)


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import diffusers

        out["diffusers"] = diffusers.__version__
    except ImportError:
        out["diffusers"] = None
    comfy = os.environ.get("COMFYUI_PATH")
    version_file = Path(comfy).expanduser() / "comfyui_version.py" if comfy else None
    out["comfyui"] = None
    if version_file and version_file.is_file():
        for line in version_file.read_text(encoding="utf-8").splitlines():
            if line.startswith("__version__"):
                out["comfyui"] = line.split("=", 1)[1].strip().strip("\"'")
    if torch.cuda.is_available():
        out["cuda"] = torch.version.cuda
    return out


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def median(xs):
    return float(np.median(xs)) if xs else None


def rmtree_quiet(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Maintainer tool: writes the bundled workflows, each API twin and its canvas file, from one definition.

    python -m tools.build_workflows --models-dir DIR   # an embedded ComfyUI (COMFYUI_PATH) with this pack and DIR
    python -m tools.build_workflows --server URL       # a running ComfyUI that has this pack loaded
    python -m tools.build_workflows --object-info FILE # a saved GET /object_info answer
    ... --check                                        # write nothing; exit 1 naming every file that would change

For every workflow in ``WORKFLOWS`` it writes ``workflows/api/<name>.json`` (the API-format graph the headless runner
queues, from ``api_graph``) and ``workflows/<name>.json`` (the canvas file users open in ComfyUI), converted from that
API twin plus ``LAYOUT`` (positions, groups, notes naming every model file, its folder and where to download it) by
``tools.workflow_format.api_to_canvas`` with the server's own node definitions. So the two files of a workflow are
the same graph with the same values by construction, and ``tests/comfy/test_workflows.py`` proves they still are
(and that the canvas file converts back to exactly its twin) against a real server. Edit the graphs here, never the
JSON files by hand. The ``.jpg`` thumbnails and docs/ screenshots come from ``tests/comfy/test_browser.py`` run with
``GLIMPSE_UPDATE_SCREENSHOTS=1``.

Node ids are stable numbers, so a diff of a regenerated workflow shows only what changed. The runner changes inputs
by class and input name (``glimpse.runner.workflow.OVERRIDES``): LoadViewSet path/views, MemoryPreset preset,
LightningLoader steps/strength, GlimpseViewNoise noise_seed, GlimpsePrompt subject/template, SaveViewSet
subfolder/save_hints; every one of them is a plain widget here, never a link.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from glimpse.presets import PRESETS
from glimpse.vae import FP16_SAFE_VAE
from tools.workflow_format import api_to_canvas, canvas_to_api

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_DIR = REPO / "workflows"
API_DIR = WORKFLOW_DIR / "api"

HF = "https://huggingface.co"
SDXL_BASE = "sd_xl_base_1.0.safetensors"
CN_SMALL = "controlnet-depth-sdxl-1.0-small.safetensors"
CN_FULL = "controlnet-depth-sdxl-1.0.safetensors"
# file -> (ComfyUI models folder, download URL, what to do with it)
MODEL_FILES = {
    SDXL_BASE: ("checkpoints", f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/{SDXL_BASE}", ""),
    "sdxl_lightning_2step_lora.safetensors": (
        "loras", f"{HF}/ByteDance/SDXL-Lightning/resolve/main/sdxl_lightning_2step_lora.safetensors", ""),
    "sdxl_lightning_4step_lora.safetensors": (
        "loras", f"{HF}/ByteDance/SDXL-Lightning/resolve/main/sdxl_lightning_4step_lora.safetensors", ""),
    "sdxl_lightning_4step_unet.safetensors": (
        "diffusion_models", f"{HF}/ByteDance/SDXL-Lightning/resolve/main/sdxl_lightning_4step_unet.safetensors", ""),
    CN_SMALL: ("controlnet", f"{HF}/diffusers/controlnet-depth-sdxl-1.0-small/resolve/main/"
                             "diffusion_pytorch_model.fp16.safetensors",
               "download `diffusion_pytorch_model.fp16.safetensors` and rename it"),
    CN_FULL: ("controlnet", f"{HF}/diffusers/controlnet-depth-sdxl-1.0/resolve/main/"
                            "diffusion_pytorch_model.fp16.safetensors",
              "download `diffusion_pytorch_model.fp16.safetensors` and rename it"),
    FP16_SAFE_VAE: ("vae", f"{HF}/madebyollin/sdxl-vae-fp16-fix/resolve/main/sdxl_vae.safetensors",
                   "download `sdxl_vae.safetensors` and rename it (stabilityai's file of that name overflows in fp16)"),
}


@dataclass(frozen=True)
class Variant:
    name: str  # workflows/<name>.json
    title: str
    preset: str  # MemoryPreset preset (glimpse.presets.PRESETS): also decides tiled or plain VAE nodes
    lightning_file: str  # "<folder>/<file>" as LightningLoader lists it
    controlnet: str
    summary: str
    vae: str | None = None  # a file in models/vae (core VAELoader); None: the checkpoint's VAE


WORKFLOWS = (
    Variant("glimpse_enhance_t4", "Glimpse Enhance: T4 (default)", "t4_balanced",
            "loras/sdxl_lightning_4step_lora.safetensors", CN_SMALL,
            "4-step Lightning LoRA on SDXL base, small depth ControlNet, the fp16-safe SDXL VAE (fp16 on cards "
            "without bf16) in one tiled pass, one view per chunk at 1024 px: fits a 16 GB T4 (planned under 10 GiB).",
            FP16_SAFE_VAE),
    Variant("glimpse_enhance_speed", "Glimpse Enhance: speed", "speed",
            "loras/sdxl_lightning_2step_lora.safetensors", CN_SMALL,
            "2-step Lightning LoRA at strength 0.5, small depth ControlNet, 768 px, four views per chunk, untiled "
            "VAE: throughput on 16 GB+ cards."),
    Variant("glimpse_enhance_quality", "Glimpse Enhance: quality", "quality",
            "diffusion_models/sdxl_lightning_4step_unet.safetensors", CN_FULL,
            "4-step Lightning full UNet at strength 0.65, full-size depth ControlNet, 1024 px, untiled VAE: 24 GB "
            "cards."),
)
SEED = 42


def _link(node: int, slot: int) -> list:
    return [str(node), slot]


def api_graph(v: Variant) -> dict:
    """The API-format graph of one variant (ids are the LAYOUT's)."""
    s = PRESETS[v.preset]
    vae = _link(18, 0) if v.vae else _link(3, 2)
    # the settings decide the pass; the widgets show the same values, and fp16 only for an fp16-safe VAE file
    vae_pass = {"vae": vae, "settings": _link(1, 0), "tiled": s.tiled_vae, "tile_size": s.vae_tile_size,
                "fp16": "auto" if v.vae else "never"}
    nodes = {
        # The named preset's own values also fill the custom fields (they start from it when switched to custom), and
        # the widgets that settings override, so that what the canvas shows is what runs.
        1: ("MemoryPreset", {"preset": v.preset, "steps": str(s.steps), "strength": s.strength,
                                    "controlnet_strength": s.controlnet_strength, "resolution": s.resolution,
                                    "views_per_chunk": s.views_per_chunk, "tiled_vae": s.tiled_vae,
                                    "vae_tile_size": s.vae_tile_size, "unet_dtype": s.unet_dtype,
                                    "controlnet_size": s.controlnet_size, "cross_view": s.cross_view,
                                    "anchor_count": s.anchor_count, "anchor_neighbours": s.anchor_neighbours}),
        2: ("LoadViewSet", {"path": "", "views": "all", "background": "#808080", "resolution": s.resolution,
                            "views_per_chunk": s.views_per_chunk, "strip_views": 0, "depth_png_scale": 0.0,
                            "anchors": "auto", "anchor_count": s.anchor_count, "settings": _link(1, 0)}),
        3: ("LightningLoader", {"ckpt_name": SDXL_BASE, "lightning_file": v.lightning_file, "steps": "auto",
                                       "strength": s.strength, "settings": _link(1, 0)}),
        4: ("ControlNetLoader", {"control_net_name": v.controlnet}),
        5: ("GlimpsePrompt", {"clip": _link(3, 1), "template": "default", "subject": "", "extra": "",
                              "user_templates": "none", "cameras": _link(2, 3), "front_azimuth": 0.0}),
        6: ("DepthControlNet", {"positive": _link(5, 0), "negative": _link(5, 1), "control_net": _link(4, 0),
                                "strength": s.controlnet_strength, "start_percent": 0.0, "end_percent": 1.0,
                                "normalisation": "shared_inverse", "depth": _link(2, 2), "images": _link(2, 0),
                                "mask": _link(2, 1), "vae": _link(3, 2), "settings": _link(1, 0),
                                "depth_estimator": "none"}),
        7: ("GlimpseVAEEncode", {"pixels": _link(2, 0), **vae_pass}),
        8: ("GlimpseViewNoise", {"noise_seed": SEED, "cameras": _link(2, 3)}),
        9: ("CFGGuider", {"model": _link(20, 0), "positive": _link(6, 0), "negative": _link(6, 1), "cfg": 1.0}),
        10: ("KSamplerSelect", {"sampler_name": "euler"}),
        11: ("SamplerCustomAdvanced", {"noise": _link(8, 0), "guider": _link(9, 0), "sampler": _link(10, 0),
                                       "sigmas": _link(3, 3), "latent_image": _link(7, 0)}),
        12: ("GlimpseVAEDecode", {"samples": _link(11, 0), **vae_pass}),
        13: ("ConfidenceBlend", {"original": _link(2, 0), "enhanced": _link(12, 0), "mask": _link(2, 1),
                                 "depth": _link(2, 2), "cameras": _link(2, 3), "threshold": 0.6, "feather_radius": 8,
                                 "opacity_weight": 1.0, "edge_weight": 1.0, "grazing_weight": 1.0,
                                 "edge_radius": 8}),
        14: ("ViewConsistency", {"views": _link(13, 0), "depth": _link(2, 2), "cameras": _link(2, 3),
                                 "mask": _link(2, 1), "reference": _link(2, 0)}),
        15: ("SaveViewSet", {"images": _link(13, 0), "subfolder": "glimpse", "mask": _link(2, 1),
                             "confidence": _link(13, 1), "cameras": _link(2, 3), "hints": _link(6, 2),
                             "save_hints": False, "scores": _link(14, 0), "cross_view": _link(20, 1),
                             "overwrite": "new folder", "hash_models": False}),
        16: ("PreviewImage", {"images": _link(6, 2)}),
        17: ("PreviewImage", {"images": _link(13, 2)}),
        20: ("GlimpseCrossViewAttention", {"model": _link(3, 0), "cameras": _link(2, 3), "depth": _link(2, 2),
                                           "mode": s.cross_view, "weight": 0.5, "neighbours": s.anchor_neighbours,
                                           "window": 0, "record_device": "auto", "settings": _link(1, 0)}),
    }
    if v.vae:
        nodes[18] = ("VAELoader", {"vae_name": v.vae})
    titles = {16: "Depth hint (near = bright)", 17: "Confidence (green = enhanced, red = kept)"}
    return {str(k): {"inputs": inputs, "class_type": cls, **({"_meta": {"title": titles[k]}} if k in titles else {})}
            for k, (cls, inputs) in nodes.items()}


def with_titles(api: dict, object_info: dict) -> dict:
    """Inputs in the node definition's order and every node's ``_meta.title`` (its own, else its display name), as
    the frontend's Export (API) writes them."""
    out = {}
    for nid, node in api.items():
        spec = object_info[node["class_type"]]
        order = [n for section in ("required", "optional") for n in (spec.get("input_order") or {}).get(section, [])]
        inputs = {n: node["inputs"][n] for n in order if n in node["inputs"]}
        inputs.update({n: v for n, v in node["inputs"].items() if n not in inputs})  # api_to_canvas names these
        title = (node.get("_meta") or {}).get("title") or spec.get("display_name")
        out[nid] = {"inputs": inputs, "class_type": node["class_type"], "_meta": {"title": title}}
    return out


# -- layout ----------------------------------------------------------------------------------------------------------

COLUMNS = {"a": 0, "b": 400, "c": 800, "d": 1260, "e": 1640, "f": 2020}
POSITIONS = {  # node id -> (column, y); y leaves each node's height (default_size) plus its 30 px title bar free
    1: ("a", 0), 2: ("a", 420),
    3: ("b", 0), 4: ("b", 300), 18: ("b", 400), 20: ("b", 500),
    5: ("c", 0), 6: ("c", 340),
    8: ("d", 0), 10: ("d", 130), 9: ("d", 240), 7: ("d", 400), 11: ("e", 0), 12: ("e", 180), 16: ("e", 400),
    13: ("f", 0), 14: ("f", 310), 15: ("f", 470), 17: ("f", 760),
}
WIDTHS = {1: 330, 2: 330, 3: 340, 4: 340, 20: 340, 5: 400, 6: 400, 13: 340, 14: 340, 15: 340}
SIZES = {16: [300, 300], 17: [340, 300]}  # image previews
GROUPS = (
    ("1  Settings and view set", (1, 2), "#3f789e"),
    ("2  Models, cross-view attention", (3, 4, 18, 20), "#8A8"),
    ("3  Prompt and depth control", (5, 6), "#88A"),
    ("4  Lightning img2img (each view's noise from one seed)", (8, 10, 9, 7, 11, 12, 16), "#b58b2a"),
    ("5  Blend, score, save", (13, 14, 15, 17), "#a1309b"),
)


def _models_note(v: Variant) -> str:
    files = [SDXL_BASE, v.lightning_file.split("/", 1)[1], v.controlnet] + ([v.vae] if v.vae else [])
    rows = []
    for f in files:
        folder, url, how = MODEL_FILES[f]
        rows.append(f"| `{f}` | `models/{folder}/` | [download]({url}){' - ' + how if how else ''} |")
    tree = "\n".join(f"{'└──' if i == len(files) - 1 else '├──'} {MODEL_FILES[f][0]}/{f}" for i, f in enumerate(files))
    return ("## Model files for this workflow\n\n| file | folder | source |\n|---|---|---|\n" + "\n".join(rows) +
            f"\n\n```\nComfyUI/models/\n{tree}\n```\n\n"
            "Sources: SDXL base 1.0 (stabilityai, CreativeML Open RAIL++-M), SDXL-Lightning (ByteDance, "
            "openrail++), depth ControlNets (diffusers, openrail++)"
            + (", SDXL-VAE-FP16-Fix (madebyollin, MIT)" if v.vae else "")
            + ". Keep the file names exactly as here: the headless runner and these workflows look them up by name."
            "\n\n"
            "**View sets without depth files**: put Depth-Anything-V2-Small-hf "
            f"([{HF}/depth-anything/Depth-Anything-V2-Small-hf]({HF}/depth-anything/Depth-Anything-V2-Small-hf): "
            "`model.safetensors`, `config.json`, `preprocessor_config.json`) into "
            "`models/depth_estimators/depth-anything-small/` and choose it as `depth_estimator` on Depth ControlNet.")


def _usage_note(v: Variant) -> str:
    return (f"## {v.title}\n\n{v.summary}\n\n"
            "1. **Load View Set** `path`: a view-set folder (`cameras.json`, `view_XX.png`, optional "
            "`view_XX_depth.npz|npy|exr|png`, `view_XX_mask.png`), absolute or inside `ComfyUI/input/`. The pack's "
            "`samples/fox` is one. `views` picks some views (`0-3,8`) or `all`.\n"
            "2. **Glimpse Prompt** `subject`: what the object is (\"a low-poly red fox\").\n"
            "3. **Queue**. Results go to `ComfyUI/output/glimpse/`: `view_XX.png`, `confidence_XX.png`, "
            "`cameras.json`, `manifest.json` (a new `glimpse_NNN` folder instead of overwriting).\n\n"
            "**Memory Preset** sets steps, strength, ControlNet strength, working resolution and views per chunk for "
            "the connected nodes (their own widgets are then ignored); pick `custom` to edit its fields. Load View "
            "Set outputs the views in chunks of the preset's size and every later node runs once per chunk, so "
            "memory stays flat however many views the set has. **Cross-View Attention** makes the views agree: "
            "Load View Set's anchor views (4, spread over the orbit) come first as one chunk and are sampled "
            "together, and every other view attends to its 2 nearest anchors at each self-attention layer and step "
            "(mode and anchors from the preset). **View Noise** draws each view's noise from the seed and the "
            "view's index, so a view comes out the same in any chunk.\n\n"
            "**VAE Encode / Decode (Glimpse)** run the pass the preset names: one untiled pass, or with `tiled_vae` "
            "one tiled pass (tiles of at most `vae_tile_size` px, split evenly, blended over 64 px)."
            + (f" The VAE is `{v.vae}` (Load VAE), run in fp16 on cards without bf16 such as the T4; a view that "
               "overflows is done again in fp32 and the log says so." if v.vae else "") + "\n\n"
            "Headless, the same graph (its API twin in `workflows/api/`): `glimpse-enhance run VIEWSET --out OUT "
            f"--workflow {v.name.removeprefix('glimpse_enhance_')}`.")


def layout(v: Variant) -> dict:
    nodes = {}
    for nid, (col, y) in POSITIONS.items():
        nodes[str(nid)] = {"pos": [COLUMNS[col], y]}
        if nid in WIDTHS:
            nodes[str(nid)]["width"] = WIDTHS[nid]
        if nid in SIZES:
            nodes[str(nid)]["size"] = SIZES[nid]
    notes = [
        {"id": 101, "type": "MarkdownNote", "pos": [-560, 0], "size": [500, 600], "text": _usage_note(v),
         "title": "How to use"},
        {"id": 102, "type": "MarkdownNote", "pos": [-560, 680], "size": [500, 460], "text": _models_note(v),
         "title": "Model files"},
    ]
    groups = [{"title": t, "nodes": list(ids), "color": c} for t, ids, c in GROUPS]
    groups.append({"title": "Read me", "nodes": [101, 102], "color": "#444"})
    return {"nodes": nodes, "notes": notes, "groups": groups, "ds": {"scale": 0.55, "offset": [600, 120]}}


# -- building --------------------------------------------------------------------------------------------------------

def build(v: Variant, object_info: dict) -> tuple[dict, dict]:
    """(API twin, canvas) of one variant. The twin is the canvas converted back, so it holds every widget input (a
    widget the graph leaves unset gets its default in both files) exactly as the frontend's Export (API) would."""
    canvas = api_to_canvas(with_titles(api_graph(v), object_info), object_info, layout(v), name=v.name)
    return canvas_to_api(canvas, object_info), canvas


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def outputs(object_info: dict) -> dict[Path, str]:
    files = {}
    for v in WORKFLOWS:
        api, canvas = build(v, object_info)
        files[API_DIR / f"{v.name}.json"] = dumps(api)
        files[WORKFLOW_DIR / f"{v.name}.json"] = dumps(canvas)
    return files


def _object_info(args) -> dict:
    if args.object_info:
        return json.loads(Path(args.object_info).read_text(encoding="utf-8"))
    from glimpse.runner.client import ComfyClient

    if args.server:
        return ComfyClient(args.server).object_info()
    from glimpse.runner.embedded import EmbeddedComfy

    with EmbeddedComfy(Path(args.models_dir) if args.models_dir else None,
                       log=lambda s: sys.stderr.write(s + "\n")) as url:
        return ComfyClient(url).object_info()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.build_workflows", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--server", help="URL of a running ComfyUI with this pack loaded")
    src.add_argument("--object-info", help="a saved /object_info JSON")
    p.add_argument("--models-dir", help="models folder for the embedded ComfyUI (when no --server/--object-info)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file would change")
    args = p.parse_args(argv)
    files = outputs(_object_info(args))
    stale = [f for f, text in files.items() if not f.is_file() or f.read_text(encoding="utf-8") != text]
    for f in stale:
        rel = f.relative_to(REPO)
        if args.check:
            sys.stdout.write(f"out of date: {rel}\n")
        else:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(files[f], encoding="utf-8")
            sys.stdout.write(f"wrote {rel}\n")
    if not stale:
        sys.stdout.write(f"{len(files)} workflow files up to date\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())

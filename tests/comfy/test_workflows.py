"""The bundled workflows (workflows/*.json and their API twins in workflows/api/) against a real ComfyUI server.

* Each file is exactly what ``tools/build_workflows.py`` makes from the server's own node definitions today (the
  twins cannot drift apart, and a changed node definition shows up here as a stale file), and each canvas file
  converts to exactly its API twin.
* Every node type exists in the server's /object_info; every model file name is an official one that the server
  lists (the fixtures are linked under those names); the runner accepts the twin and applies all its overrides.
* Each API twin runs end to end on the fox sample set with the Vega-size fixtures on CPU, at 128 px (LoadViewSet's
  settings link is cut so its own resolution applies, as the runner's --resolution does): 16 views for the
  default workflow, a selection of views for the others.
"""
from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from glimpse.runner.workflow import OverrideError, WorkflowError, apply_overrides, load_workflow, workflow_mode
from tools.workflow_format import FRONTEND_ONLY, canvas_to_api

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
NAMES = ("glimpse_enhance_t4", "glimpse_enhance_speed", "glimpse_enhance_quality")
UPDATE = os.environ.get("GLIMPSE_UPDATE_SCREENSHOTS") == "1"  # also write docs/fox_t4_strip.png
MODEL_INPUTS = {("LightningLoader", "ckpt_name"), ("LightningLoader", "lightning_file"),
                ("ControlNetLoader", "control_net_name"), ("VAELoader", "vae_name")}


def load_tool():
    """tools/build_workflows.py (a maintainer script outside the installed package), loaded by path."""
    name = "glimpse_build_workflows"
    if name not in sys.modules:  # registered first: its dataclasses look their module up
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "build_workflows.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.object_info()


def canvas(name: str) -> dict:
    return json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))


def twin(name: str) -> dict:
    return load_workflow(REPO / "workflows" / "api" / f"{name}.json")


def test_files_are_what_the_tool_makes_from_this_server(object_info):
    tool = load_tool()
    assert [v.name for v in tool.WORKFLOWS] == list(NAMES)
    stale = []
    for path, text in tool.outputs(object_info).items():
        old = path.read_text(encoding="utf-8") if path.is_file() else ""
        if old != text:
            diff = difflib.unified_diff(old.splitlines(), text.splitlines(), "committed", "generated", lineterm="", n=1)
            stale.append(f"{path.relative_to(REPO)}:\n" + "\n".join(list(diff)[:30]))
    assert not stale, "regenerate with `python -m tools.build_workflows --server URL`:\n" + "\n".join(stale)
    for name in NAMES:
        assert (REPO / "workflows" / f"{name}.jpg").is_file(), f"{name}.jpg thumbnail is missing"


@pytest.mark.parametrize("name", NAMES)
def test_canvas_converts_to_exactly_its_api_twin(name, object_info):
    assert canvas_to_api(canvas(name), object_info) == twin(name)
    with pytest.raises(WorkflowError, match="canvas"):
        load_workflow(REPO / "workflows" / f"{name}.json")  # the runner refuses the canvas file, names the twin


@pytest.mark.parametrize("name", NAMES)
def test_node_types_and_model_files_exist(name, object_info, models_dir):
    c, api = canvas(name), twin(name)
    types = {n["type"] for n in c["nodes"]}
    assert types - FRONTEND_ONLY <= set(object_info), sorted(types - FRONTEND_ONLY - set(object_info))
    assert {n["class_type"] for n in api.values()} <= set(object_info)
    notes = [n for n in c["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    assert notes and any("models/checkpoints/" in n["widgets_values"][0] for n in notes)
    for nid, node in api.items():
        spec = object_info[node["class_type"]]["input"]
        for input_name, value in node["inputs"].items():
            entry = {**spec.get("required", {}), **spec.get("optional", {})}[input_name]
            options = entry[0] if isinstance(entry[0], list) else entry[1].get("options") if len(entry) > 1 else None
            if options is not None and not isinstance(value, list):
                assert value in options, f"node {nid} {node['class_type']}.{input_name} = {value!r} not in {options}"
            if (node["class_type"], input_name) in MODEL_INPUTS:
                assert value != "none"
                for note in notes:  # the note names every model file this workflow loads
                    if "Model files" in note.get("title", ""):
                        assert value.split("/")[-1] in note["widgets_values"][0]
                folder, _, file = value.rpartition("/")
                found = list(models_dir.glob(f"*/{file}"))
                assert found and (not folder or found[0].parent.name == folder), value


@pytest.mark.parametrize("name", NAMES)
def test_one_seed_and_every_runner_override_lands(name):
    api = twin(name)
    assert workflow_mode(api) == "set"
    seeds = [(n["class_type"], k) for n in api.values() for k in n["inputs"] if "seed" in k]
    assert seeds == [("GlimpseViewNoise", "noise_seed")], "one seed for every view of a set"
    values = {"path": "glimpse/abc", "views": "0-3", "subfolder": "glimpse/p", "preset": "t4_minimal", "steps": 4,
              "strength": 0.5, "seed": 7, "subject": "a fox", "template": "object", "save_hints": True}
    try:
        out, applied = apply_overrides(api, values)
    except OverrideError as e:
        pytest.fail(f"the runner cannot apply its overrides to {name}: {e}")
    assert len(applied) >= len(values)
    loader = next(n for n in out.values() if n["class_type"] == "LoadViewSet")
    assert loader["inputs"]["views"] == "0-3" and loader["inputs"]["path"] == "glimpse/abc"


def small(api: dict, views: str, subfolder: str, resolution: int = 128, anchors: str = "auto") -> dict:
    """The twin at ``resolution`` px on ``views`` (with these cross-view anchors), saving hints into ``subfolder``."""
    out = copy.deepcopy(api)
    for node in out.values():
        if node["class_type"] == "LoadViewSet":
            node["inputs"].pop("settings")
            node["inputs"].update(path=str(FOX), views=views, resolution=resolution, anchors=anchors)
        elif node["class_type"] == "SaveViewSet":
            node["inputs"].update(subfolder=subfolder, save_hints=True)
    return out


# views, how many, the cross-view anchors among them (sampled first, together)
RUNS = {"glimpse_enhance_t4": ("all", 16, "auto"), "glimpse_enhance_speed": ("0-3", 4, "0,2"),
        "glimpse_enhance_quality": ("2,9", 2, "2,9")}


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_runs_end_to_end(name, comfy_server):
    views, count, anchors = RUNS[name]
    subfolder = f"workflow_test/{name}"
    t0 = time.perf_counter()
    history = comfy_server.queue(small(twin(name), views, subfolder, anchors=anchors), timeout=1500)
    seconds = time.perf_counter() - t0
    comfy_server.timings[f"{name} {count} views"] = seconds
    assert history["status"]["status_str"] == "success"
    folder = comfy_server.output_dir / subfolder
    expected = sorted(range(16)) if views == "all" else [int(v) for v in views.replace("-", ",").split(",")]
    if views == "0-3":
        expected = [0, 1, 2, 3]
    assert len(expected) == count
    for i in expected:
        for stem in ("view", "confidence", "hint"):
            path = folder / f"{stem}_{i:02d}.png"
            assert path.is_file(), f"{path.name} missing in {sorted(p.name for p in folder.iterdir())}"
        with Image.open(folder / f"view_{i:02d}.png") as im:
            assert im.size == (128, 128) and im.mode == "RGBA"
    assert len(list(folder.glob("view_*.png"))) == count
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest, "SaveViewSet wrote a manifest"
    assert_vae_passes(history, twin(name), 128)
    listed = {it["filename"] for out in history["outputs"].values() for it in out.get("images", [])
              if it.get("type") == "output"}
    assert {f"view_{i:02d}.png" for i in expected} <= listed, "the runner collects outputs from /history"
    if UPDATE and name == "glimpse_enhance_t4":
        write_strip(folder, REPO / "docs" / "fox_t4_strip.png")


def assert_vae_passes(history: dict, api: dict, size: int) -> None:
    """The graph ran our VAE nodes, never core's three-pass tiled ones, and each chunk's pass is the one the memory
    plan of the graph's settings names (glimpse.vae.plan_for: what estimate_memory budgets)."""
    from glimpse.presets import preset_settings
    from glimpse.vae import plan_for

    classes = {n["class_type"] for n in api.values()}
    assert not classes & {"VAEEncodeTiled", "VAEDecodeTiled", "VAEEncode", "VAEDecode"}
    preset = next(n["inputs"] for n in api.values() if n["class_type"] == "MemoryPreset")
    fields = {k: preset[k] for k in ("tiled_vae", "vae_tile_size")}
    plan = plan_for(preset_settings(preset["preset"], **fields), size, size)
    for nid, cls in (("7", "GlimpseVAEEncode"), ("12", "GlimpseVAEDecode")):
        assert api[nid]["class_type"] == cls
        texts = history["outputs"][nid]["text"]
        assert texts and all(t.startswith(plan.describe()) for t in texts), (nid, texts, plan.describe())


def test_t4_twin_runs_one_tiled_vae_pass(comfy_server):
    """The t4 preset's tiled VAE at a size where it tiles: its 544 px tiles give 2x2 at 1024 px; 160 px tiles give
    2x2 at 256 px here (MemoryPreset custom with the t4 values otherwise)."""
    api = small(twin("glimpse_enhance_t4"), "3,11", "workflow_test/t4_tiled", resolution=256, anchors="3,11")
    preset = next(n["inputs"] for n in api.values() if n["class_type"] == "MemoryPreset")
    preset.update(preset="custom", vae_tile_size=160)
    history = comfy_server.queue(api, timeout=1500)
    assert history["status"]["status_str"] == "success"
    assert_vae_passes(history, api, 256)
    assert all("2x2 tiles of 160x160 px" in t for t in history["outputs"]["12"]["text"])


def crop_box(views) -> tuple[float, float, float, float]:
    """The union of the views' masks (fractions of the image), with a margin: the fox fills a third of each view."""
    boxes = []
    for i in views:
        with Image.open(FOX / f"view_{i:02d}_mask.png") as m:
            x0, y0, x1, y1 = m.getbbox()
            boxes.append((x0 / m.width, y0 / m.height, x1 / m.width, y1 / m.height))
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    side = max(x1 - x0, y1 - y0) + 0.06
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def tile(path: Path, box, size: int, white: bool = True) -> Image.Image:
    with Image.open(path) as im:
        im = im.convert("RGBA" if white else "RGB")
        im = im.crop(tuple(round(f * d) for f, d in zip(box, (im.width, im.height, im.width, im.height))))
        im = im.resize((size, size), Image.LANCZOS)
    if not white:
        return im
    out = Image.new("RGB", im.size, "white")
    out.paste(im, mask=im.getchannel("A"))
    return out


def write_strip(folder: Path, out: Path, views=(0, 2, 4, 6, 8, 10), size: int = 160) -> None:
    """Rows: the input render, the workflow's output, its confidence, the clean render (fox sample set)."""
    box = crop_box(views)
    rows = [("input render", lambda i: tile(FOX / f"view_{i:02d}.png", box, size)),
            ("t4 workflow output", lambda i: tile(folder / f"view_{i:02d}.png", box, size)),
            ("confidence", lambda i: tile(folder / f"confidence_{i:02d}.png", box, size, white=False)),
            ("clean render", lambda i: tile(FOX / "clean" / f"view_{i:02d}.png", box, size))]
    label = 130
    strip = Image.new("RGB", (label + size * len(views), size * len(rows)), "white")
    draw = ImageDraw.Draw(strip)
    for r, (text, load) in enumerate(rows):
        draw.text((8, r * size + size // 2 - 6), text, fill="black")
        for c, i in enumerate(views):
            strip.paste(load(i), (label + c * size, r * size))
    out.parent.mkdir(exist_ok=True)
    strip.save(out, optimize=True)


def test_template_browser_serves_the_workflows(comfy_server):
    import requests

    listed = requests.get(f"{comfy_server.url}/workflow_templates", timeout=10).json()
    assert set(NAMES) <= set(listed.get("glimpse-enhance", []))
    for name in NAMES:
        for suffix in (".json", ".jpg"):
            r = requests.get(f"{comfy_server.url}/api/workflow_templates/glimpse-enhance/{name}{suffix}", timeout=10)
            assert r.status_code == 200, f"{name}{suffix}: HTTP {r.status_code}"
    assert requests.get(f"{comfy_server.url}/api/workflow_templates/glimpse-enhance/{NAMES[0]}.json",
                        timeout=10).json() == canvas(NAMES[0])


def _rect(node: dict) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a canvas node including its 30 px title bar."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - 30, x + w, y + h


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("name", NAMES)
def test_layout_is_readable(name):
    """No two nodes overlap, every node sits inside exactly one group, and groups do not overlap."""
    c = canvas(name)
    rects = {n["id"]: _rect(n) for n in c["nodes"]}
    clashes = [(a, b) for a in rects for b in rects if a < b and _overlap(rects[a], rects[b])]
    assert not clashes, f"overlapping nodes {clashes}"
    groups = [(g["title"], (g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                            g["bounding"][1] + g["bounding"][3])) for g in c["groups"]]
    for nid, (x0, y0, x1, y1) in rects.items():
        inside = [t for t, (gx0, gy0, gx1, gy1) in groups if gx0 <= x0 and gy0 <= y0 and x1 <= gx1 and y1 <= gy1]
        assert len(inside) == 1, f"node {nid} is inside groups {inside}"
    assert not [(a, b) for i, (a, ra) in enumerate(groups) for b, rb in groups[i + 1:] if _overlap(ra, rb)]

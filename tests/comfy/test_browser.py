"""The bundled canvas workflows in a real browser: ComfyUI's own frontend (the comfyui-frontend-package wheel, served
by a real server with this pack and the Vega fixture models) in headless Chromium (the Debian ``chromium`` package,
driven by Playwright from PyPI; never ``playwright install``).

For each workflow: it opens with no missing-node dialog and every node type registered; what the frontend itself
would queue (``app.graphToPrompt``) is exactly the API twin, so the converter and the frontend agree; pressing the
Run shortcut (Ctrl+Enter) queues it and the server runs it (one view of the fox sample set, the preset switched to
custom at 256 px to keep it short) and lists the saved views in /history. A canvas with an unknown node type does
show the missing-node dialog (the check can fail). Shipped ComfyUI templates convert exactly as the frontend converts
them.

Screenshots go to the test's tmp folder; with ``GLIMPSE_UPDATE_SCREENSHOTS=1`` they also become docs/<name>.png and
the workflows' .jpg thumbnails.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import requests
from PIL import Image, ImageStat

from glimpse.runner.workflow import load_workflow
from tools.workflow_format import canvas_to_api, is_canvas, node_types

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
NAMES = ("glimpse_enhance_t4", "glimpse_enhance_speed", "glimpse_enhance_quality")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 2560, "height": 1440}  # the whole graph at about 70 %, where node text is drawn
# Before the page opens: no template browser over the canvas (first visit), no minimap over the graph, and node text
# drawn at any zoom (the frontend switches to unlabelled boxes below an 8 px font by default).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 1}
UPDATE = os.environ.get("GLIMPSE_UPDATE_SCREENSHOTS") == "1"
THUMB_WIDTH = 640
TEMPLATES = ("default.json", "sdxl_refiner_prompt_example.json", "image_lotus_depth_v1_1.json")

if CHROMIUM is None:
    pytest.skip("no Chromium: install the Debian package `chromium` (apt-get install -y chromium)",
                allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("Playwright is not installed (pip install -r requirements-dev.txt)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(comfy_server):
    from playwright.sync_api import sync_playwright

    for key, value in SETTINGS.items():
        requests.post(f"{comfy_server.url}/settings/{key}", json=value, timeout=10).raise_for_status()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport=VIEWPORT)
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        t0 = time.perf_counter()
        pg.goto(comfy_server.url, wait_until="networkidle", timeout=120_000)
        pg.wait_for_function("window.app && window.app.graph && window.app.canvas && window.LiteGraph",
                             timeout=120_000)
        comfy_server.timings["frontend load"] = time.perf_counter() - t0
        try:
            yield pg
        finally:
            browser.close()


def open_workflow(page, data: dict, name: str) -> None:
    page.errors.clear()
    page.evaluate("async ([data, name]) => { await window.app.loadGraphData(data, true, true, name); }", [data, name])
    page.wait_for_timeout(500)


def missing_nodes_dialog(page) -> str | None:
    return page.evaluate("""() => {
        for (const d of document.querySelectorAll('.p-dialog')) {
            const t = d.innerText || '';
            if (d.querySelector('.comfy-missing-nodes') || /nodes are missing/i.test(t)) return t;
        }
        return null;
    }""")


def close_dialogs(page) -> None:
    for _ in range(3):
        if not page.evaluate("() => document.querySelectorAll('.p-dialog').length"):
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(200)


def unregistered(page) -> list[str]:
    return page.evaluate("() => window.app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type])"
                         ".map(n => `${n.id} ${n.type}`)")


def frontend_prompt(page) -> dict:
    return page.evaluate("async () => (await window.app.graphToPrompt()).output")


def screenshot(page, path: Path) -> Path:
    page.evaluate("""() => {
        try { window.app.extensionManager.command.execute('Comfy.Canvas.FitView'); } catch (e) {}
        window.app.canvas.setDirty(true, true);
    }""")
    page.wait_for_timeout(400)
    page.screenshot(path=str(path))
    return path


def publish(png: Path, name: str) -> None:
    """docs/<name>.png (the README's picture) and workflows/<name>.jpg (ComfyUI's template thumbnail)."""
    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    with Image.open(png) as im:
        im.convert("RGB").save(docs / f"{name}.png", optimize=True)
        thumb = im.convert("RGB")
        thumb.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
        thumb.save(REPO / "workflows" / f"{name}.jpg", quality=85, optimize=True)


@pytest.mark.parametrize("name", NAMES)
def test_opens_with_every_node_and_converts_like_the_frontend(name, page, tmp_path):
    data = json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    open_workflow(page, data, f"{name}.json")
    assert missing_nodes_dialog(page) is None
    assert unregistered(page) == []
    assert page.evaluate("() => window.app.graph.nodes.length") == len(data["nodes"])
    assert frontend_prompt(page) == load_workflow(REPO / "workflows" / "api" / f"{name}.json")
    png = screenshot(page, tmp_path / f"{name}.png")
    with Image.open(png) as im:
        assert im.size == (VIEWPORT["width"], VIEWPORT["height"])
        assert max(ImageStat.Stat(im.convert("L")).stddev) > 10, "the screenshot is blank"
    if UPDATE:
        publish(png, name)
    assert page.errors == [], "uncaught errors in the page"


def set_widget(page, node_type: str, widget: str, value) -> None:
    ok = page.evaluate("""([t, w, v]) => {
        const nodes = window.app.graph.nodes.filter(n => n.type === t);
        for (const n of nodes) { const x = n.widgets.find(x => x.name === w); x.value = v; x.callback?.(v); }
        return nodes.length;
    }""", [node_type, widget, value])
    assert ok, f"no {node_type} node"


@pytest.mark.parametrize("name", NAMES)
def test_queues_from_the_ui_and_runs(name, page, comfy_server):
    data = json.loads((REPO / "workflows" / f"{name}.json").read_text(encoding="utf-8"))
    open_workflow(page, data, f"{name}.json")
    subfolder = f"browser_test/{name}"
    edits = {("LoadViewSet", "path"): str(FOX), ("LoadViewSet", "views"): "5", ("LoadViewSet", "anchors"): "5",
             ("MemoryPreset", "preset"): "custom", ("MemoryPreset", "resolution"): 256,
             ("MemoryPreset", "views_per_chunk"): 1, ("SaveViewSet", "subfolder"): subfolder}
    for (node_type, widget), value in edits.items():
        set_widget(page, node_type, widget, value)
    expected = copy.deepcopy(load_workflow(REPO / "workflows" / "api" / f"{name}.json"))
    for node in expected.values():
        for (node_type, widget), value in edits.items():
            if node["class_type"] == node_type:
                node["inputs"][widget] = value
    page.mouse.click(VIEWPORT["width"] // 2, VIEWPORT["height"] - 60)  # focus the canvas, off any node
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                              timeout=30_000) as resp:
        page.keyboard.press("Control+Enter")
    assert resp.value.status == 200, resp.value.text()
    prompt_id = resp.value.json()["prompt_id"]
    deadline = time.monotonic() + 900
    entry = None
    while time.monotonic() < deadline:
        entry = requests.get(f"{comfy_server.url}/history/{prompt_id}", timeout=10).json().get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(1)
    assert entry is not None, f"prompt {prompt_id} never reached the history:\n{comfy_server.tail()}"
    assert entry["prompt"][2] == expected, "the server ran exactly the canvas graph with the edits"
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[:2000]
    saved = {it["filename"] for out in entry["outputs"].values() for it in out.get("images", [])
             if it.get("type") == "output"}
    assert {"view_05.png", "confidence_05.png"} <= saved
    assert (comfy_server.output_dir / subfolder / "view_05.png").is_file()
    assert page.errors == [], "uncaught errors in the page"


def test_missing_node_dialog_is_detected(page, tmp_path):
    data = json.loads((REPO / "workflows" / "glimpse_enhance_t4.json").read_text(encoding="utf-8"))
    bad = copy.deepcopy(data)
    bad["nodes"][0]["type"] = "GlimpseNodeThatDoesNotExist"
    open_workflow(page, bad, "missing.json")
    page.wait_for_timeout(500)
    text = missing_nodes_dialog(page)
    close_dialogs(page)
    assert text is not None and "GlimpseNodeThatDoesNotExist" in text


def _template_dir() -> Path | None:
    spec = importlib.util.find_spec("comfyui_workflow_templates")
    return Path(list(spec.submodule_search_locations)[0]) / "templates" if spec else None


@pytest.mark.parametrize("template", TEMPLATES)
def test_converter_agrees_with_the_frontend_on_shipped_templates(template, page, comfy_server):
    folder = _template_dir()
    if folder is None or not (folder / template).is_file():
        pytest.skip(f"comfyui_workflow_templates has no {template}")
    data = json.loads((folder / template).read_text(encoding="utf-8"))
    assert is_canvas(data)
    info = comfy_server.object_info()
    if set(node_types(data).values()) - set(info):
        pytest.skip(f"{template} uses node types this ComfyUI lacks")
    open_workflow(page, data, template)
    close_dialogs(page)  # templates name model files the fixtures do not have
    assert frontend_prompt(page) == canvas_to_api(data, info)

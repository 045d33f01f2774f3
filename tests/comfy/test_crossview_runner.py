"""The headless runner with cross-view attention (the bundled t4 workflow, correspondence mode, on the harness server
and a second one): anchors first on every server, and the same views however the run is interrupted or spread."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse.camera_file import read_camera_file
from glimpse.crossview.anchors import anchor_order

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
VIEWS = (0, 2, 4, 6, 8, 10, 12, 14)  # every other fox view: 8 views 45 degrees apart


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    """The fox's even views as an 8-view set (renumbered, with their 8 cameras)."""
    dst = tmp_path_factory.mktemp("fox8")
    cams = json.loads((FOX / "cameras.json").read_text())
    cams["views"] = [dict(cams["views"][v], index=k) for k, v in enumerate(VIEWS)]
    (dst / "cameras.json").write_text(json.dumps(cams))
    for k, v in enumerate(VIEWS):
        for suffix in (".png", "_depth.npz", "_mask.png"):
            if (FOX / f"view_{v:02d}{suffix}").is_file():
                shutil.copy(FOX / f"view_{v:02d}{suffix}", dst / f"view_{k:02d}{suffix}")
    return dst


def another_server(comfy_server, models_dir, tmp_path_factory, name: str):
    """A second server beside the harness's. The harness server first returns the RAM of the models earlier tests
    left loaded: two servers with the t4 workflow's models and this process's in-process ComfyUI fill the 24 GiB
    CI machine otherwise (the kernel's OOM killer ended a server there)."""
    comfy_server.unload_models(free_memory=True)
    harness = sys.modules["glimpse_tests_comfy_process"]
    return type(comfy_server)(harness.make_base_dir(tmp_path_factory.mktemp(name)), models_dir)


@pytest.fixture
def second_server(comfy_server, models_dir, tmp_path_factory):
    server = another_server(comfy_server, models_dir, tmp_path_factory, "comfy-server-2")
    yield server
    server.stop()


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "glimpse.cli", *map(str, args)]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(*args), capture_output=True, text=True, timeout=1200, cwd=REPO)


def pixels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16) for p in sorted(out.glob("view_*.png"))}


def same(a: dict, b: dict) -> int:
    assert sorted(a) == sorted(b)
    return max(int(np.abs(a[k] - b[k]).max()) for k in a)


def test_anchors_first_and_the_same_views_after_a_kill_and_on_two_servers(comfy_server, second_server, eight,
                                                                           tmp_path):
    base = ("--resolution", 64, "--seed", 7, "--chunk", 1)
    whole = tmp_path / "whole"
    r = run("run", eight, "--out", whole, "--server", comfy_server.url, *base)
    assert r.returncode == 0, r.stderr
    m = json.loads((whole / "manifest.json").read_text())
    assert m["cross_view"]["mode"] == "correspondence" and m["cross_view"]["anchors"] == [0, 2, 4, 6]
    order = anchor_order(read_camera_file(eight / "cameras.json").world_to_camera, [0, 2, 4, 6])
    # each view's 2 nearest anchors (an anchor's: the nearest other anchors), as LoadViewSet and the node chose them
    assert {int(v): e["anchors"] for v, e in m["views"].items()} == {v: order[v][:2].tolist() for v in range(8)}
    reference = pixels(whole)

    # killed once the anchors and one more view are on disk; the rerun samples the anchors again for the record but
    # keeps their files, and finishes with the same views
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd("run", eight, "--out", killed, "--server", comfy_server.url, *base),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 600
    while len(list(killed.glob("view_*.png"))) < 5:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = json.loads((killed / "manifest.json").read_text())["views"]
    stamps = {v: (killed / f"view_{int(v):02d}.png").stat().st_mtime_ns for v in done}
    r = run("run", eight, "--out", killed, "--server", comfy_server.url, *base)
    assert r.returncode == 0, r.stderr
    assert {v: (killed / f"view_{int(v):02d}.png").stat().st_mtime_ns for v in done} == stamps  # not redone
    assert same(pixels(killed), reference) == 0

    # two servers: each samples the anchors itself before its first other view; the views do not depend on which
    # server ran them
    spread = tmp_path / "spread"
    r = run("run", eight, "--out", spread, "--server", comfy_server.url, second_server.url, *base)
    assert r.returncode == 0, r.stderr
    m = json.loads((spread / "manifest.json").read_text())
    assert {e["server"] for e in m["views"].values()} == {comfy_server.url, second_server.url}
    assert m["timing"]["prompts"] == 2 + 4  # the anchors once per server, then the 4 other views
    assert same(pixels(spread), reference) == 0


def test_fp16_unet_weights_sample_the_anchors_and_views_without_nan(comfy_server, models_dir, tmp_path_factory,
                                                                    monkeypatch):
    """The t4 workflow (cross-view on) on a server started with --fp16-unet: a core preview of the decoded views
    turns any NaN into numpy's 'invalid value encountered' warning in that server's log. (On a CPU ComfyUI computes
    fp16 weights in fp32; fp16 arithmetic of the mixing is tested in tests/unit/test_crossview.py.)"""
    api = json.loads((REPO / "workflows" / "api" / "glimpse_enhance_t4.json").read_text())
    for node in api.values():
        if node["class_type"] == "LoadViewSet":
            node["inputs"].pop("settings")
            node["inputs"].update(path=str(FOX), views="0-2", resolution=64, anchors="0,2")
    decode = next(k for k, n in api.items() if n["class_type"] == "GlimpseVAEDecode")
    api["99"] = {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}
    monkeypatch.setenv("GLIMPSE_COMFY_FLAGS", "--fp16-unet")
    server = another_server(comfy_server, models_dir, tmp_path_factory, "comfy-fp16")
    try:
        history = server.queue(api, timeout=1200)
        log = server.log()
    finally:
        server.stop()
    assert history["status"]["status_str"] == "success"
    assert "model weight dtype torch.float16" in log and "GlimpseCrossViewAttention" in json.dumps(api)
    assert "invalid value encountered" not in log and len(history["outputs"]["99"]["images"]) == 3

"""The headless runner with the bundled t4 workflow on the harness server (Vega-size fixture models, CPU, 64 px).

What a user runs: `glimpse-enhance run <set> --out <dir> --server <url> --resolution 64 --save-hints`.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
T4 = REPO / "workflows" / "api" / "glimpse_enhance_t4.json"
FOX = REPO / "samples" / "fox"
RES = "64"


@pytest.fixture(scope="module")
def server(comfy_server):
    """The harness server, once it is known to run every node type of the bundled t4 workflow."""
    info = comfy_server.object_info()
    missing = sorted({n["class_type"] for n in json.loads(T4.read_text()).values()} - set(info))
    assert not missing, f"node types of {T4.name} not registered: {missing}"
    lvs = {**info["LoadViewSet"]["input"]["required"], **info["LoadViewSet"]["input"].get("optional", {})}
    assert "views" in lvs, "LoadViewSet lost its 'views' selection input (the runner sets it)"
    return comfy_server


@pytest.fixture
def views(tmp_path) -> Path:
    dst = tmp_path / "views"
    shutil.copytree(FOX, dst, ignore=shutil.ignore_patterns("clean"))
    return dst


def cmd(*args) -> list[str]:
    return [sys.executable, "-m", "glimpse.cli", *map(str, args)]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(cmd(*args), capture_output=True, text=True, timeout=1200, cwd=REPO)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def saved_views(out: Path) -> list[int]:
    """The views the runner's manifest lists as done so far ([] before its first save)."""
    try:
        return [int(k) for k in manifest(out)["views"]]
    except (OSError, ValueError, KeyError):  # not written yet, or caught between the runner's atomic renames
        return []


def test_t4_run_writes_views_confidences_hints_and_scores_then_skips(server, views, tmp_path):
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--server", server.url, "--resolution", RES, "--save-hints", "--seed", 7)
    assert r.returncode == 0, r.stderr
    for kind in ("view", "confidence", "hint"):
        assert sorted(p.name for p in out.glob(f"{kind}_*.png")) == [f"{kind}_{i:02d}.png" for i in range(16)], kind
    with Image.open(out / "view_05.png") as im:
        assert max(im.size) == int(RES)
    m = manifest(out)
    assert m["complete"] and m["missing_views"] == []
    assert m["scores"]["views"] == 16 and m["scores"]["consistency"]["pairs_scored"] > 0, m["scores"]
    assert m["workflow_facts"]["seed"] == 7
    ran = m["timing"]["executed_nodes"]
    # models load once per run, the prompt is encoded once per set; the sampler runs for every chunk prompt
    for loader in ("LightningLoader", "ControlNetLoader", "MemoryPreset"):
        assert ran.get(loader, 0) <= 1, ran
    assert ran["SamplerCustomAdvanced"] == m["timing"]["prompts"], ran
    t = m["timing"]
    print(f"t4 at {RES} px on CPU: runner overhead {t['overhead_per_view_s']:.3f} s/view, server "
          f"{t['server_per_view_s']:.2f} s/view ({100 * t['overhead_per_view_s'] / t['server_per_view_s']:.2f} %)")

    again = cli("run", views, "--out", out, "--server", server.url, "--resolution", RES, "--save-hints", "--seed", 7)
    assert again.returncode == 0 and "16 already done (skipped), 0 to run" in again.stderr, again.stderr
    # GlimpsePrompt runs once per chunk prompt (its cameras input is the chunk's), but encodes each text once per
    # set: tests/comfy/test_prompt_node.py counts the encodes across chunks.


def test_t4_interrupted_run_resumes(server, views, tmp_path):
    out = tmp_path / "out"
    args = ("run", views, "--out", out, "--server", server.url, "--resolution", RES, "--seed", 3, "--chunk", 1)
    # started as a background job starts it (SIGINT ignored): the runner installs its own handling
    proc = subprocess.Popen(cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 600
    while len(saved_views(out)) < 3:  # the runner's manifest lists them (files on disk alone may still be collecting)
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    saved = saved_views(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    first = manifest(out)
    done = sorted(int(k) for k in first["views"])
    assert set(saved) <= set(done), err  # what was recorded stays recorded
    assert first["missing_views"] == [v for v in range(16) if v not in done]
    assert all((out / f"view_{v:02d}.png").is_file() for v in done)
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} already done (skipped), {16 - len(done)} to run" in r.stderr
    assert manifest(out)["complete"]


def test_t4_bad_set_is_refused_with_the_users_path(server, views, tmp_path):
    (views / "view_09_mask.png").write_bytes(b"not an image")
    r = cli("run", views, "--out", tmp_path / "out", "--server", server.url, "--resolution", RES)
    assert r.returncode == 2
    assert f"view_09 mask: {views / 'view_09_mask.png'} is not a readable image" in r.stderr, r.stderr

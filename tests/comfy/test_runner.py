"""The headless runner against real ComfyUI servers, driven as users drive it: the `glimpse-enhance` command.

These tests prove the runner's mechanics (upload, queueing, progress, collecting outputs, resume, several servers,
errors reaching the terminal) with a per-view workflow of core nodes (tests/comfy/data/core_per_view.json: LoadImage
-> ImageScale -> ImageBlur -> ImageScale -> SaveImage), so they need no model. The servers are the runner's own
embedded ComfyUI (glimpse.runner.embedded), started once per module.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from glimpse.runner.embedded import EmbeddedComfy

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
CORE_WF = Path(__file__).parent / "data" / "core_per_view.json"
IMG2IMG_WF = Path(__file__).parent / "data" / "core_img2img_per_view.json"
FOX = REPO / "samples" / "fox"


@pytest.fixture(scope="module")
def servers():
    started = []
    try:
        for _ in range(2):
            e = EmbeddedComfy(cpu=True)
            e.start()
            started.append(e)
        yield [e.url for e in started]
    finally:
        for e in started:
            e.stop()


@pytest.fixture
def views(tmp_path) -> Path:
    dst = tmp_path / "views"
    shutil.copytree(FOX, dst, ignore=shutil.ignore_patterns("clean"))
    return dst


def workflow(tmp_path, work_px: int = 512, **node_inputs) -> Path:
    """The core per-view workflow; ``work_px`` sets how much blurring each view costs."""
    wf = json.loads(CORE_WF.read_text())
    wf["2"]["inputs"].update(width=work_px, height=work_px)
    for key, value in node_inputs.items():
        nid, name = key.split("__")
        wf[nid]["inputs"][name] = value
    p = tmp_path / f"wf_{work_px}.json"
    p.write_text(json.dumps(wf))
    return p


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "glimpse.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, **kw)


def _sigint_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_cli(*args) -> subprocess.Popen:
    """The runner as a background job starts it: SIGINT ignored, whatever this test process inherited (the runner
    must install its own handling)."""
    return subprocess.Popen([sys.executable, "-m", "glimpse.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, preexec_fn=_sigint_ignored)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def wait_for_views(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("view_*.png"))) < n:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"fewer than {n} views after {timeout} s"
        time.sleep(0.05)


def test_run_writes_every_view_and_a_rerun_skips_them(servers, views, tmp_path):
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", workflow(tmp_path), "--server", servers[0])
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.glob("view_*.png"))
    assert names == [f"view_{i:02d}.png" for i in range(16)]
    with Image.open(out / "view_07.png") as im:
        assert im.size == (64, 64)
    m = manifest(out)
    assert m["complete"] and m["missing_views"] == [] and len(m["views"]) == 16
    assert m["timing"]["views"] == 16 and m["timing"]["overhead_per_view_s"] > 0
    scores = m["scores"]
    assert scores["views"] == 16 and scores["consistency"]["pairs_scored"] > 0, scores
    assert scores["sharpness_gain"] < 1, "the blur workflow makes views softer than their renders"
    assert "views 16/16" in r.stderr and "s/view" in r.stderr and "ETA" in r.stderr
    # ComfyUI has no route to delete files: the run says what stays on a server it does not own
    uploaded = manifest(out)["inputs_hash"][:12]
    assert f"note: files of this run stay on {servers[0]}: inputs in input/glimpse/{uploaded}" in r.stderr
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    again = cli("run", views, "--out", out, "--workflow", workflow(tmp_path), "--server", servers[0])
    assert again.returncode == 0, again.stderr
    assert "16 already done (skipped), 0 to run" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.json"} == \
        {k: v for k, v in stamps.items() if k != "manifest.json"}

    changed = cli("run", views, "--out", out, "--workflow", workflow(tmp_path, 256), "--server", servers[0])
    assert changed.returncode == 0 and "0 already done (skipped), 16 to run" in changed.stderr, \
        "a different workflow reruns every view"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_run_resumes_with_nothing_lost(servers, views, tmp_path, sig):
    out = tmp_path / "out"
    wf = workflow(tmp_path, 1024)
    proc = start_cli("run", views, "--out", out, "--workflow", wf, "--server", servers[0])
    wait_for_views(out, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    first = manifest(out)
    done = sorted(int(k) for k in first["views"])
    on_disk = sorted(int(p.stem[5:]) for p in out.glob("view_*.png"))
    assert len(done) >= 3 and first["missing_views"] and not first["complete"]
    assert set(done) <= set(on_disk), "every view in the manifest is on disk"
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "missing views (rerun the same command to resume)" in err
        assert sorted(first["missing_views"] + done) == list(range(16))
    stamps = {v: (out / f"view_{v:02d}.png").stat().st_mtime_ns for v in done}

    r = cli("run", views, "--out", out, "--workflow", wf, "--server", servers[0])
    assert r.returncode == 0, r.stderr
    assert f"{len(done)} already done (skipped), {16 - len(done)} to run" in r.stderr
    m = manifest(out)
    assert m["complete"] and sorted(int(k) for k in m["views"]) == list(range(16))
    assert {v: (out / f"view_{v:02d}.png").stat().st_mtime_ns for v in done} == stamps, "finished views kept"


def test_two_servers_share_one_set(servers, views, tmp_path):
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", workflow(tmp_path, 1024), "--server", *servers)
    assert r.returncode == 0, r.stderr
    m = manifest(out)
    assert m["complete"]
    used = {v["server"] for v in m["views"].values()}
    assert used == set(servers), f"views per server: {[v['server'] for v in m['views'].values()]}"


def test_a_folder_of_sets_goes_set_by_set_to_the_servers(servers, views, tmp_path):
    sets = tmp_path / "sets"
    for name, first in (("fox_a", 0), ("fox_b", 4)):
        (sets / name).mkdir(parents=True)
        for i in range(4):
            shutil.copy(views / f"view_{first + i:02d}.png", sets / name / f"view_{i:02d}.png")
        cams = json.loads((views / "cameras.json").read_text())
        cams["views"] = cams["views"][first:first + 4]
        (sets / name / "cameras.json").write_text(json.dumps(cams))
    out = tmp_path / "out"
    r = cli("run", sets, "--out", out, "--workflow", workflow(tmp_path, 1024), "--server", *servers)
    assert r.returncode == 0, r.stderr
    first = {}
    for name in ("fox_a", "fox_b"):
        m = manifest(out / name)
        assert m["complete"] and sorted(m["views"]) == ["0", "1", "2", "3"]
        assert m["viewset"] == str((sets / name).resolve())
        first[name] = m["views"]["0"]["server"]
    assert set(first.values()) == set(servers), "each server started on a set of its own"


def test_a_dead_servers_views_move_to_the_other(servers, views, tmp_path):
    doomed = EmbeddedComfy(cpu=True)
    doomed.start()
    out = tmp_path / "out"
    try:
        proc = start_cli("run", views, "--out", out, "--workflow", workflow(tmp_path, 1024), "--server", doomed.url,
                         servers[0])
        wait_for_views(out, 2, proc)
        doomed.proc.kill()
        _, err = proc.communicate(timeout=300)
    finally:
        doomed.stop()
    assert proc.returncode == 0, err
    assert "server lost" in err and f"its views move to {servers[0]}" in err
    m = manifest(out)
    assert m["complete"] and len(m["views"]) == 16


def test_a_rejected_prompt_lists_its_node_errors(servers, views, tmp_path):
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", workflow(tmp_path, **{"2__upscale_method": "sideways"}),
            "--server", servers[0])
    assert r.returncode == 1
    assert "node 2 (ImageScale) input 'upscale_method': Value not in list" in r.stderr, r.stderr
    assert "sideways" in r.stderr


def test_sigterm_stops_the_embedded_server_and_removes_its_folder(views, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for i in range(2):
        shutil.copy(views / f"view_{i:02d}.png", small)
    proc = start_cli("run", small, "--out", tmp_path / "out", "--workflow", workflow(tmp_path), "--cpu")
    lines = []
    while not lines or "ComfyUI ready after" not in lines[-1]:
        line = proc.stderr.readline()
        assert line, f"the run ended early: {''.join(lines)}"
        lines.append(line)
    text = "".join(lines)
    base = Path(text.split("embedded ComfyUI folder ")[1].split()[0])
    url = text.split("starting ComfyUI from ")[1].split(" on ")[1].split()[0]
    assert base.is_dir()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert not base.exists(), "the embedded server's folder (inputs, outputs, log) is removed"
    from glimpse.runner.client import ComfyClient, ServerUnreachable

    with pytest.raises(ServerUnreachable):
        ComfyClient(url).check()


def test_embedded_server_starts_and_stops(views, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    for i in range(2):
        shutil.copy(views / f"view_{i:02d}.png", small)
    shutil.copy(views / "cameras.json", small)
    out = tmp_path / "out"
    r = cli("run", small, "--out", out, "--workflow", workflow(tmp_path), "--cpu",
            env=dict(os.environ, COMFYUI_PATH=os.environ["COMFYUI_PATH"]))
    assert r.returncode == 0, r.stderr
    assert "starting ComfyUI from" in r.stderr and "ComfyUI ready after" in r.stderr
    url = r.stderr.split("starting ComfyUI from ")[1].split(" on ")[1].split()[0]
    from glimpse.runner.client import ComfyClient, ServerUnreachable

    with pytest.raises(ServerUnreachable):
        ComfyClient(url).check()
    assert manifest(out)["complete"]


def test_loop_chains_rounds_and_stops_on_a_failing_command(servers, views, tmp_path):
    work = tmp_path / "work"
    refit = "echo refit {round} > {round_dir}/refit.txt"
    render = "cp {enhanced_dir}/view_*.png {render_dir}/"
    r = cli("loop", views, "--work", work, "--rounds", 2, "--refit-cmd", refit, "--render-cmd", render,
            "--workflow", workflow(tmp_path), "--server", servers[0])
    assert r.returncode == 0, r.stderr
    for rnd in (1, 2):
        assert (work / f"round_{rnd}" / "refit.txt").read_text().strip() == f"refit {rnd}"
        assert len(list((work / f"round_{rnd}" / "enhanced").glob("view_*.png"))) == 16
        assert (work / f"round_{rnd}" / "render" / "cameras.json").is_file()
    assert manifest(work / "round_2" / "enhanced")["viewset"] == str((work / "round_1" / "render").resolve())

    again = cli("loop", views, "--work", work, "--rounds", 2, "--refit-cmd", refit, "--render-cmd", render,
                "--workflow", workflow(tmp_path), "--server", servers[0])
    assert again.returncode == 0 and again.stderr.count("finished in an earlier run, skipped") == 2

    bad = cli("loop", views, "--work", tmp_path / "work2", "--rounds", 2, "--refit-cmd", "exit 3",
              "--render-cmd", render, "--workflow", workflow(tmp_path), "--server", servers[0])
    assert bad.returncode == 3
    assert "round 1: the refit command failed with exit code 3: exit 3" in bad.stderr


def test_img2img_loads_models_once_and_encodes_the_prompt_once(models_dir, views, tmp_path):
    """A real SDXL (Vega fixture) + Lightning LoRA img2img per view through the embedded server: after the first
    prompt, ComfyUI's cache serves the checkpoint, the LoRA and the text encoding; only the per-view nodes run."""
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        shutil.copy(views / f"view_{i:02d}.png", small)
    wf = json.loads(IMG2IMG_WF.read_text())
    wf["2"]["inputs"].update(width=64, height=64)
    wf_path = tmp_path / "img2img.json"
    wf_path.write_text(json.dumps(wf))
    out = tmp_path / "out"
    r = cli("run", small, "--out", out, "--workflow", wf_path, "--models-dir", models_dir, "--cpu")
    assert r.returncode == 0, r.stderr
    t = manifest(out)["timing"]
    assert t["prompts"] == 3
    ran = t["executed_nodes"]
    assert ran["CheckpointLoaderSimple"] == 1 and ran["LoraLoaderModelOnly"] == 1 and ran["CLIPTextEncode"] == 1
    assert ran["KSamplerAdvanced"] == 3 and ran["SaveImage"] == 3
    with Image.open(out / "view_02.png") as im:
        assert im.size == (64, 64)


# -- set mode: the pack's LoadViewSet -> SaveViewSet, one prompt per chunk of views ----------------------------------

def set_workflow(url: str, tmp_path: Path, resolution: int = 64) -> Path:
    """LoadViewSet -> SaveViewSet with every required widget at its /object_info default (no models needed)."""
    from glimpse.runner.client import ComfyClient

    info = ComfyClient(url).object_info()
    assert "LoadViewSet" in info and "SaveViewSet" in info, "the pack's LoadViewSet/SaveViewSet are not registered"
    assert "views" in {**info["LoadViewSet"]["input"].get("required", {}),
                       **info["LoadViewSet"]["input"].get("optional", {})}, "LoadViewSet lost its 'views' input"

    def defaults(cls):
        out = {}
        for name, spec in info[cls]["input"].get("required", {}).items():
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in opts:
                out[name] = opts["default"]
            elif isinstance(spec[0], list) and spec[0]:
                out[name] = spec[0][0]
        return out

    wf = {"1": {"class_type": "LoadViewSet", "inputs": {**defaults("LoadViewSet"), "resolution": resolution,
                                                         "views": "all"}},
          "2": {"class_type": "SaveViewSet", "inputs": {**defaults("SaveViewSet"), "images": ["1", 0],
                                                         "mask": ["1", 1], "cameras": ["1", 3]}}}
    p = tmp_path / "set_minimal.json"
    p.write_text(json.dumps(wf))
    return p


def test_set_mode_queues_one_prompt_per_chunk(servers, views, tmp_path):
    wf = set_workflow(servers[0], tmp_path)
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", wf, "--server", servers[0], "--chunk", 4)
    assert r.returncode == 0, r.stderr
    assert "(set mode)" in r.stderr and "4 view(s) per prompt" in r.stderr
    m = manifest(out)
    assert m["complete"] and m["timing"]["prompts"] == 4 and m["timing"]["views"] == 16
    assert sorted(p.name for p in out.glob("view_*.png")) == [f"view_{i:02d}.png" for i in range(16)]
    with Image.open(out / "view_11.png") as im:
        assert im.size == (64, 64) and im.mode == "RGBA"
    assert m["scores"]["consistency"]["pairs_scored"] > 0, m["scores"]


def test_a_bad_set_is_refused_before_anything_is_sent(servers, views, tmp_path):
    """LoadViewSet's own validation runs in the runner first, on the user's files (the server keeps it for the
    canvas: tests/comfy/test_viewset_depth.py)."""
    import numpy as np

    wf = set_workflow(servers[0], tmp_path)
    np.savez_compressed(views / "view_07_depth.npz", depth=np.ones((128, 128), np.float32))
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", wf, "--server", servers[0])
    assert r.returncode == 2
    assert "view_07 depth is 128x128 but its image is 256x256" in r.stderr, r.stderr
    assert str(views) in r.stderr or "view_07_depth.npz" in r.stderr, r.stderr
    assert not out.exists()


def test_a_view_failing_on_the_server_reports_the_nodes_message(servers, views, tmp_path):
    """What only loading finds (a depth file whose header reads but whose data fails its checksum) fails on the
    server: the node's own message reaches the terminal."""
    import numpy as np

    wf = set_workflow(servers[0], tmp_path)
    (views / "view_03_depth.npz").unlink()
    np.savez(views / "view_03_depth.npz", depth=np.ones((256, 256), np.float32))  # stored: the data is plain
    data = bytearray((views / "view_03_depth.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (views / "view_03_depth.npz").write_bytes(bytes(data))
    out = tmp_path / "out"
    r = cli("run", views, "--out", out, "--workflow", wf, "--server", servers[0], "--chunk", 4)
    assert r.returncode == 1
    assert "node 1 (LoadViewSet) failed: ValueError: view_03 depth:" in r.stderr, r.stderr
    assert "Bad CRC-32" in r.stderr, r.stderr
    assert not manifest(out)["complete"]

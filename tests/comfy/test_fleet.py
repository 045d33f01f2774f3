"""`glimpse-enhance fleet` on a local Ray (this machine, CPU), driven as users drive it: the command line.

The identity test runs the bundled t4 workflow on the harness server (Vega-size random models, 64 px) with two actors
attached to it, so only one model-holding ComfyUI is in memory. The fault tests start two embedded ComfyUIs (one per
actor, about 0.5 GiB each) and run the core per-view blur workflow of test_runner.py, made slow enough per view to
kill a server mid-set. Every fleet child gets SIGINT at its default, so Ctrl-C works even when CI runs this as a
background job (which starts children with SIGINT ignored).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("ray", reason="the fleet extra is not installed: pip install -e '.[fleet]'")
pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
CORE_WF = Path(__file__).parent / "data" / "core_per_view.json"
T4 = REPO / "workflows" / "api" / "glimpse_enhance_t4.json"


def make_sets(root: Path, names=("a", "b", "c"), views: int = 4) -> Path:
    """Sets of ``views`` fox views each (images, depth, masks, their cameras), a different slice per set."""
    cams = json.loads((FOX / "cameras.json").read_text())
    for k, name in enumerate(names):
        d = root / name
        d.mkdir(parents=True)
        first = (k * views) % (16 - views)
        for i in range(views):
            for suffix in (".png", "_depth.npz", "_mask.png"):
                shutil.copy(FOX / f"view_{first + i:02d}{suffix}", d / f"view_{i:02d}{suffix}")
        picked = [{**v, "index": i} for i, v in enumerate(cams["views"][first:first + views])]
        (d / "cameras.json").write_text(json.dumps({**cams, "views": picked}))
    return root


def blur_workflow(tmp_path: Path, work_px: int) -> Path:
    wf = json.loads(CORE_WF.read_text())
    wf["2"]["inputs"].update(width=work_px, height=work_px)
    p = tmp_path / f"blur_{work_px}.json"
    p.write_text(json.dumps(wf))
    return p


def fleet_args(sets: Path, out: Path, wf: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "glimpse.cli", "fleet", str(sets), "--out", str(out), "--workflow", str(wf),
            "--servers-per-node", "2", "--plain", *map(str, extra)]


def fleet(*args, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run(fleet_args(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Background:
    """A fleet running while the test watches OUT_DIR; its stderr goes to a file (a pipe could fill up)."""

    def __init__(self, tmp_path: Path, *args):
        self.log = tmp_path / "fleet.log"
        self.proc = subprocess.Popen(fleet_args(*args), stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
                                     cwd=REPO, preexec_fn=_default_sigint)

    def wait_for(self, what: str, cond, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while not (found := cond()):
            assert self.proc.poll() is None, f"the fleet ended before {what}:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"no {what} after {timeout} s:\n{self.log.read_text()}"
            time.sleep(0.05)
        return found

    def finish(self, timeout: float = 600) -> str:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.log.read_text()


def report(out: Path) -> dict:
    try:
        return json.loads((out / "fleet.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("view_*.png")}


def running_set_with_views(out: Path, n: int):
    """(set, server entry) of a running set whose folder already holds ``n`` views, from fleet.json."""
    r = report(out)
    for name, entry in r.get("sets", {}).items():
        server = r["servers"].get(entry["server"] or "", {})
        if entry["status"] == "running" and len(stamps(out / name)) >= n and server.get("comfy_pid"):
            return name, entry["server"], server
    return None


def png_content(path: Path):
    """Pixels and embedded prompt of a PNG, less LoadViewSet's change fingerprint (its input files' upload stamps,
    which differ between any two uploads of the same set)."""
    with Image.open(path) as im:
        prompt = json.loads(im.info.get("prompt", "{}"))
        for node in prompt.values():
            node.pop("is_changed", None)
        return im.mode, im.size, im.tobytes(), prompt


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


def assert_every_view(out: Path, sets: Path) -> None:
    for d in sorted(p for p in sets.iterdir() if p.is_dir()):
        m = manifest(out / d.name)
        views = sorted(int(p.stem[5:7]) for p in d.glob("view_??.png"))
        assert m["complete"] and sorted(int(k) for k in m["views"]) == views, d.name
        assert sorted(stamps(out / d.name)) == [f"view_{v:02d}.png" for v in views], d.name
        assert m["viewset"] == str(d.resolve()), "the manifest names the driver's set folder, as run writes it"


# -- two actors, three sets, the same outputs as run ------------------------------------------------------------

@pytest.fixture(scope="module")
def t4_server(comfy_server):
    if not T4.is_file():
        pytest.skip(f"{T4} does not exist yet")
    missing = sorted({n["class_type"] for n in json.loads(T4.read_text()).values()} - set(comfy_server.object_info()))
    if missing:
        pytest.skip(f"node types of the t4 workflow not registered: {missing}")
    return comfy_server


def test_two_actors_enhance_three_sets_exactly_as_run_does(t4_server, tmp_path):
    sets = make_sets(tmp_path / "sets", views=3)
    out = tmp_path / "out"
    opts = ("--resolution", 64, "--seed", 7, "--save-hints")
    t0 = time.monotonic()
    r = fleet(sets, out, "t4", "--attach", t4_server.url, *opts)
    fleet_s = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    rep = report(out)
    assert rep["counts"] == {"done": 3}, rep
    assert {e["server"] for e in rep["sets"].values()} == {"server0", "server1"}, "both actors took sets"
    assert "server0: " in r.stderr and "set(s)" in r.stderr and "s/view" in r.stderr, "per-server throughput"
    assert_every_view(out, sets)

    # the reference: run on each set, against the same server with its cache emptied (so it computes again)
    t4_server._requests.post(t4_server.url + "/free", json={"unload_models": True, "free_memory": True}, timeout=60)
    run_s = 0.0
    for name in ("a", "b", "c"):
        ref = tmp_path / "ref" / name
        t0 = time.monotonic()
        rr = subprocess.run([sys.executable, "-m", "glimpse.cli", "run", sets / name, "--out", ref, "--workflow",
                             "t4", "--server", t4_server.url, *map(str, opts)], capture_output=True, text=True,
                            cwd=REPO, timeout=900)
        run_s += time.monotonic() - t0
        assert rr.returncode == 0, rr.stderr
        ours = sorted(p.name for p in (out / name).glob("*.png"))
        assert ours == sorted(p.name for p in ref.glob("*.png")) and len(ours) == 9, ours
        for png in ours:
            assert png_content(out / name / png) == png_content(ref / png), f"{name}/{png} differs from run's"
        m, mr = manifest(out / name), manifest(ref)
        assert m["params_hash"] == mr["params_hash"] and m["workflow_facts"]["seed"] == 7
        for key in ("viewset", "workflow", "inputs_hash", "overrides", "all_views"):
            assert m[key] == mr[key], key
    print(f"fleet, 2 actors on one server: 3 sets x 3 views in {fleet_s:.1f} s (Ray start and actors included); "
          f"run, set by set: {run_s:.1f} s")


# -- faults -------------------------------------------------------------------------------------------------------

@pytest.fixture
def slow_sets(tmp_path):
    """Three sets of 6 views with a per-view workflow slow enough (large blur) to stop a server mid-set."""
    return make_sets(tmp_path / "sets", views=6), blur_workflow(tmp_path, 1536)


@pytest.mark.parametrize("victim", ["comfyui", "actor"])
def test_a_server_dying_mid_set_costs_only_its_unfinished_views(slow_sets, tmp_path, victim):
    sets, wf = slow_sets
    out = tmp_path / "out"
    bg = Background(tmp_path, sets, out, wf)
    name, label, server = bg.wait_for("a running set with 2 views", lambda: running_set_with_views(out, 2))
    kept = stamps(out / name)
    pid = server["comfy_pid"] if victim == "comfyui" else server["pid"]
    os.kill(pid, signal.SIGKILL)
    err = bg.finish()
    assert bg.proc.returncode == 0, err
    rep = report(out)
    assert rep["counts"] == {"done": 3}, rep
    entry = rep["sets"][name]
    assert entry["attempts"] == 2 and entry["server"] != label, entry
    assert rep["servers"][label]["lost_sets"] == 1
    assert f"{name}: " in err and "its unfinished views go to another server" in err, err
    assert_every_view(out, sets)
    after = stamps(out / name)
    assert {k: after[k] for k in kept} == kept, "views finished before the loss are not redone"
    m = manifest(out / name)
    assert {m["views"][str(int(k[5:7]))]["server"] for k in kept} == {server["url"]}
    if victim == "actor":
        assert "its actor died" in err
        assert not alive(server["comfy_pid"]), "the dead actor's ComfyUI went with it"
        left = [d for d in Path(tempfile.gettempdir()).glob("glimpse-fleet-*")
                if (d / "runner.pid").is_file() and (d / "runner.pid").read_text().strip() == str(server["pid"])]
        assert not left, "the next set started on the node removed the dead worker's temporary folder"
    else:
        assert f"{label}: restarting its ComfyUI" in err


def test_a_bad_set_is_reported_once_with_its_own_error_and_the_others_finish(tmp_path):
    sets = make_sets(tmp_path / "sets", names=("a", "b", "broken"), views=3)
    (sets / "broken" / "view_01.png").write_bytes(b"this is not a png")
    (sets / "nocams").mkdir()  # a set by its cameras.json, which lists no views
    (sets / "nocams" / "cameras.json").write_text(json.dumps({"views": []}))
    out = tmp_path / "out"
    r = fleet(sets, out, blur_workflow(tmp_path, 64), "--chunk", 1)
    assert r.returncode == 1, r.stderr
    rep = report(out)
    assert {k: e["status"] for k, e in rep["sets"].items()} == \
        {"a": "done", "b": "done", "broken": "bad_input", "nocams": "bad_input"}, rep
    broken, nocams = rep["sets"]["broken"], rep["sets"]["nocams"]
    assert f"{sets / 'broken' / 'view_01.png'} is not a readable image" in broken["error"], broken
    assert "no view images (expected view_00.png" in nocams["error"], nocams
    assert broken["attempts"] == 1 and nocams["attempts"] == 1, "not retried"
    assert r.stderr.count("broken: bad input on") == 1 and r.stderr.count("nocams: bad input on") == 1, r.stderr
    assert manifest(out / "a")["complete"] and manifest(out / "b")["complete"]


def test_ctrl_c_keeps_finished_views_and_the_same_command_resumes(slow_sets, tmp_path):
    sets, wf = slow_sets
    out = tmp_path / "out"
    bg = Background(tmp_path, sets, out, wf)
    bg.wait_for("a finished set and a running one with a view", lambda: report(out).get("counts", {}).get("done")
                and running_set_with_views(out, 1))
    bg.proc.send_signal(signal.SIGINT)
    err = bg.finish(120)
    assert bg.proc.returncode == 130, err
    assert "interrupted: rerun the same command to resume" in err
    rep = report(out)
    done = sorted(k for k, e in rep["sets"].items() if e["status"] == "done")
    assert done and "interrupted" in {e["status"] for e in rep["sets"].values()}, rep
    before = {d.name: stamps(d) for d in out.iterdir() if d.is_dir()}
    for d in out.iterdir():
        if d.is_dir():
            m = manifest(d)
            assert {f"view_{int(k):02d}.png" for k in m["views"]} <= set(before[d.name]), "manifest matches disk"

    again = fleet(sets, out, wf)
    assert again.returncode == 0, again.stderr
    for name in done:
        assert f"{name}: finished in an earlier run, skipped" in again.stderr
    assert_every_view(out, sets)
    for name, views in before.items():
        after = stamps(out / name)
        assert {k: after[k] for k in views} == views, f"{name}: finished views were redone"
    assert report(out)["counts"] == {"done": 3}


def test_shared_fs_mode_writes_what_the_default_mode_writes(tmp_path):
    sets = make_sets(tmp_path / "sets", names=("a", "b"), views=2)
    wf = blur_workflow(tmp_path, 256)
    shipped, shared = tmp_path / "shipped", tmp_path / "shared"
    for out, extra in ((shipped, ()), (shared, ("--shared-fs",))):
        r = fleet(sets, out, wf, *extra)
        assert r.returncode == 0, r.stderr
        assert report(out)["counts"] == {"done": 2} and report(out)["shared_fs"] == bool(extra)
        assert_every_view(out, sets)
    for name in ("a", "b"):
        pngs = sorted(p.name for p in (shipped / name).glob("*.png"))
        assert pngs == sorted(p.name for p in (shared / name).glob("*.png"))
        for png in pngs:
            assert (shipped / name / png).read_bytes() == (shared / name / png).read_bytes(), f"{name}/{png}"
        assert manifest(shipped / name)["params_hash"] == manifest(shared / name)["params_hash"]

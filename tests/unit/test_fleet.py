"""The fleet without Ray or ComfyUI: which set goes next, retries, outcomes, fleet.json, skipping finished sets, and
a server (ServerWorker) used as a plain object.

A set whose outputs are all in OUT_DIR runs through run() without contacting any server, which is enough to follow a
job from the driver's files to the worker's temporary folder and back.
"""
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from glimpse.runner import fleet_plan as fp
from glimpse.runner import manifest as mf
from glimpse.runner.client import ServerUnreachable
from glimpse.runner.embedded import free_port  # a port nothing listens on once it returns
from glimpse.runner.fleet import Fleet, FleetOptions
from glimpse.runner.fleet_actor import ServerWorker, pack_outputs, write_outputs
from glimpse.runner.run import RunOptions
from glimpse.files import files_digest
from glimpse.runner.viewset import check_set
from glimpse.runner.workflow import load_workflow

REPO = Path(__file__).resolve().parents[2]

WF = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
      "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


def make_set(folder, views=2):
    """A set of small real PNG views (a per-view workflow's scan reads the images only)."""
    folder.mkdir(parents=True)
    for i in range(views):
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(folder / f"view_{i:02d}.png")
    (folder / "cameras.json").write_text(json.dumps({"views": [{}] * views}))
    return folder


def inputs_digest(folder):
    """The inputs hash run's prepare records for a set of a per-view workflow."""
    return files_digest(check_set(folder, images_only=True).files(), contents=True)


def test_source_opens_sets_in_name_order_and_passes_over_other_folders(tmp_path):
    for name in ("b", "a", "c"):
        make_set(tmp_path / name)
    (tmp_path / "notes").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "file.txt").write_text("x")
    src = fp.SetSource(tmp_path)
    assert src.total == 4, "only names are listed up front: 'notes' is not opened yet"
    assert [p.name for p in src] == ["a", "b", "c"]
    assert src.total == 3


def test_scheduler_retries_a_lost_set_first_on_another_server_and_gives_up_after_retries(tmp_path):
    sets = [make_set(tmp_path / n) for n in ("a", "b", "c")]
    s = fp.Scheduler(iter(sets), retries=1)
    a = s.next_for("s0")
    assert (a.name, a.attempts) == ("a", 1)
    assert s.lost(a, "s0") is True
    assert s.next_for("s0", others_alive=True).name == "b", "s0 lost 'a': another server should take it"
    again = s.next_for("s1", others_alive=True)
    assert (again.name, again.attempts) == ("a", 2)
    assert s.lost(again, "s1") is False, "1 retry: a second loss ends it"
    assert s.next_for("s0").name == "c" and s.next_for("s0") is None and not s.has_work()


def test_a_lost_set_goes_back_to_its_server_when_no_other_is_alive(tmp_path):
    s = fp.Scheduler(iter([make_set(tmp_path / "a")]), retries=2)
    t = s.next_for("s0")
    s.lost(t, "s0")
    assert s.has_work() and s.next_for("s0", others_alive=True) is None
    assert s.next_for("s0", others_alive=False) is t


def test_attempt_outcomes():
    assert fp.attempt_outcome(0, False, False) == fp.DONE
    assert fp.attempt_outcome(130, True, True) == fp.INTERRUPTED
    assert fp.attempt_outcome(1, False, False) == fp.SERVER_LOST
    assert fp.attempt_outcome(2, False, False) == fp.SERVER_LOST, "run says 2 for an unreachable server"
    assert fp.attempt_outcome(2, False, True) == fp.BAD_INPUT
    assert fp.attempt_outcome(1, False, True) == fp.FAILED


def test_run_error_takes_runs_error_block():
    log = ("workflow x (set mode); 1 set(s)\nviews 4/16  1.0 s/view\nerror: the prompt for views 0-3 was rejected:\n"
           "  node 1 (LoadViewSet): validation failed: view_07_depth.npz is 128x128\n"
           "missing views (rerun the same command to resume): 0-15\n")
    assert fp.run_error(log) == ("the prompt for views 0-3 was rejected:\n"
                                 "  node 1 (LoadViewSet): validation failed: view_07_depth.npz is 128x128")
    assert fp.run_error("no error here\nlast line\n") == "last line"


def test_set_finished_needs_every_view_with_the_same_params(tmp_path):
    folder = make_set(tmp_path / "sets" / "a")
    out = tmp_path / "out" / "a"
    out.mkdir(parents=True)
    user = {"seed": 7}
    params = mf.params_hash(WF, user, inputs_digest(folder))
    m = mf.new({}, params, viewset=str(folder), inputs_hash="ih", workflow="wf", overrides=user, views=[0, 1],
               out_dir=out)
    for v in (0, 1):
        (out / f"view_{v:02d}.png").write_bytes(b"x")
        mf.record(m, v, params, [f"view_{v:02d}.png"])
    mf.save(m, out)
    assert fp.set_finished(folder, out, WF, user, True)
    assert not fp.set_finished(folder, out, WF, {"seed": 8}, True), "another seed reruns the set"
    original = (folder / "view_01.png").read_bytes()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "view_01.png")
    assert not fp.set_finished(folder, out, WF, user, True), "changed inputs rerun the set"
    (folder / "view_01.png").write_bytes(original)
    (out / "view_00.png").unlink()
    assert not fp.set_finished(folder, out, WF, user, True), "a lost output reruns the set"


def test_report_keeps_earlier_sets_and_counts_statuses(tmp_path):
    r = fp.FleetReport(tmp_path, sets_dir="S")
    r.set("a", status=fp.DONE, seconds=3.0, server="server0")
    r.set("b", status=fp.BAD_INPUT, error="view set folder b holds no view files")
    r.server("server0", url="http://127.0.0.1:1")["views"] += 4
    r.save()
    data = json.loads((tmp_path / fp.REPORT).read_text())
    assert data["format"] == fp.FORMAT and data["sets_dir"] == "S"
    assert data["counts"] == {"done": 1, "bad_input": 1}
    assert data["sets"]["b"]["error"] == "view set folder b holds no view files"
    assert data["servers"]["server0"]["views"] == 4
    assert [p.name for p in tmp_path.iterdir()] == [fp.REPORT], "written atomically, no temp file left"
    again = fp.FleetReport(tmp_path, sets_dir="S")
    again.set("c", status=fp.RUNNING)
    assert set(again.sets) == {"a", "b", "c"} and again.sets["a"]["seconds"] == 3.0


def test_throughput_and_progress_lines(tmp_path):
    line = fp.throughput_line("server1", {"sets": 2, "views": 8, "busy_s": 16.0, "lost_sets": 1})
    assert line == "  server1: 2 set(s), 8 view(s) run in 16.0 s, 2.00 s/view, 450.0 sets/h busy, 1 set(s) lost"
    p = fp.FleetProgress(5, stream=open(tmp_path / "log", "w"), tty=False)
    p.sets_done, p.sets_failed, p.running = 2, 1, 2
    assert p.line().startswith("sets 2/5 (1 failed, 2 running)  views 0 run, 0 skipped")


@pytest.fixture
def fleet_dirs(tmp_path):
    sets, out = tmp_path / "sets", tmp_path / "out"
    make_set(sets / "a", views=3)
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(WF))
    return sets, out, wf


def finish_views(folder, out_dir, wf, views):
    """OUT_DIR/<set> as run leaves it after ``views`` finished."""
    out_dir.mkdir(parents=True, exist_ok=True)
    user = {k: None for k in ("preset", "steps")}
    params = mf.params_hash(load_workflow(wf), user, inputs_digest(folder))
    m = mf.new({}, params, viewset=str(folder), inputs_hash="ih", workflow=str(wf), overrides={}, views=[0, 1, 2],
               out_dir=out_dir)
    for v in views:
        (out_dir / f"view_{v:02d}.png").write_bytes(f"enhanced {v}".encode())
        mf.record(m, v, params, [f"view_{v:02d}.png"], server="http://elsewhere")
    mf.save(m, out_dir)


def driver(sets, out, wf):
    return Fleet(None, FleetOptions(RunOptions(viewset=sets, out=out, workflow=str(wf))), print)


def poll_to_end(worker, timeout=60):
    """Poll as the driver does; the last result with every file and the latest manifest the polls brought."""
    deadline, files, manifest = time.monotonic() + timeout, {}, None
    while True:
        res = worker.poll(0.5)
        files.update(res["files"])
        manifest = res["manifest"] or manifest
        if res["done"]:
            return {**res, "files": files, "manifest": manifest}
        assert time.monotonic() < deadline


def test_a_finished_set_travels_out_and_back_without_a_server(fleet_dirs):
    sets, out, wf = fleet_dirs
    finish_views(sets / "a", out / "a", wf, [0, 1, 2])
    f = driver(sets, out, wf)
    assert fp.set_finished(sets / "a", out / "a", f.base, f.user, f.images_only), "the driver passes it over"
    task = f.sched.next_for("server0")
    job = f.make_job(task, out / "a")
    assert sorted(job["inputs"]) == ["view_00.png", "view_01.png", "view_02.png"], "what run's scan reads, only"
    assert sorted(job["outputs"]) == ["manifest.json", "view_00.png", "view_01.png", "view_02.png"]
    w = ServerWorker()
    w.url = f"http://127.0.0.1:{free_port()}"  # never contacted: nothing is left to run
    w.begin(job)
    res = poll_to_end(w)
    assert (res["code"], res["outcome"], res["error"]) == (0, fp.DONE, None), res["log_tail"]
    assert res["files"] == {}, "the driver has every view already"
    m = res["manifest"]
    assert m["complete"] and m["viewset"] != str((sets / "a").resolve()), "run ran in the worker's own folder"
    write_outputs(out / "a", res["files"], m, sets / "a", str(wf))
    kept = mf.load(out / "a")
    assert kept["viewset"] == str((sets / "a").resolve()) and kept["workflow"] == str(wf)
    assert kept["views"]["1"]["server"] == "http://elsewhere"


def test_a_worker_whose_server_is_gone_reports_the_set_lost_not_bad(fleet_dirs):
    sets, out, wf = fleet_dirs
    finish_views(sets / "a", out / "a", wf, [0, 2])
    f = driver(sets, out, wf)
    w = ServerWorker()
    w.url = f"http://127.0.0.1:{free_port()}"
    w.begin(f.make_job(f.sched.next_for("server0"), out / "a"))
    res = poll_to_end(w)
    assert res["code"] == 2 and res["outcome"] == fp.SERVER_LOST, res["log_tail"]
    assert "unreachable" in res["error"]
    assert res["manifest"]["missing_views"] == [1] and res["files"] == {}, "views 0 and 2 stay done"


def test_attaching_to_a_server_that_is_not_there_names_it():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnreachable, match=url):
        ServerWorker(attach=url).start()


def test_pack_outputs_sends_the_manifest_and_the_files_it_lists(fleet_dirs, tmp_path):
    sets, _, wf = fleet_dirs
    finish_views(sets / "a", tmp_path / "o", wf, [1])
    (tmp_path / "o" / "stray.png").write_bytes(b"not in the manifest")
    files = pack_outputs(tmp_path / "o")
    assert sorted(files) == ["manifest.json", "view_01.png"] and files["view_01.png"] == b"enhanced 1"
    assert pack_outputs(tmp_path / "empty") == {}


def test_fleet_refuses_one_set_and_a_bad_override_before_starting_ray(fleet_dirs, tmp_path):
    sets, out, wf = fleet_dirs
    from glimpse.runner.fleet import fleet

    stream = io.StringIO()
    code = fleet(FleetOptions(RunOptions(viewset=sets / "a", out=out, workflow=str(wf), stream=stream)))
    assert code == 2 and "is a view set; fleet takes a folder of view sets" in stream.getvalue()
    stream = io.StringIO()
    code = fleet(FleetOptions(RunOptions(viewset=sets, out=out, workflow=str(wf), overrides={"steps": 4},
                                         stream=stream)))
    assert code == 2 and "--steps" in stream.getvalue(), stream.getvalue()


def test_fleet_without_ray_says_how_to_get_it_and_run_never_imports_it(fleet_dirs):
    sets, out, wf = fleet_dirs
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from glimpse.cli import main\n"
            f"sys.exit(main(['fleet', {str(sets)!r}, '--out', {str(out)!r}, '--workflow', {str(wf)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and "pip install 'glimpse-enhance[fleet]'" in r.stderr, r.stderr
    probe = ("import sys, glimpse.cli, glimpse.runner.run, glimpse.runner.fleet_actor\n"
             "sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO, timeout=120).returncode == 0

"""`glimpse-enhance run/loop` without a server: argument parsing and the bad-input paths (exit 2, clear message)."""
import io
import json
import shutil
import socket
import time
from pathlib import Path

import pytest

from glimpse.cli import build_parser, main, run_options
from glimpse.runner.loop import LoopError, expand
from glimpse.runner.progress import Progress
from glimpse.runner.run import RunOptions, run

PER_VIEW = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


FOX = Path(__file__).resolve().parents[2] / "samples" / "fox"


@pytest.fixture
def viewset(tmp_path):
    """Three views of the fox sample set, with their cameras."""
    s = tmp_path / "set"
    s.mkdir()
    for i in range(3):
        for end in (".png", "_mask.png", "_depth.npz"):
            shutil.copy(FOX / f"view_{i:02d}{end}", s)
    cams = json.loads((FOX / "cameras.json").read_text())
    cams["views"] = cams["views"][:3]
    (s / "cameras.json").write_text(json.dumps(cams))
    return s


@pytest.fixture
def workflow(tmp_path):
    p = tmp_path / "wf.json"
    p.write_text(json.dumps(PER_VIEW))
    return p


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args, tmp_path, **kw):
    parsed = build_parser().parse_args(args)
    stream = io.StringIO()
    opts = run_options(parsed)
    opts.stream = stream
    for k, v in kw.items():
        setattr(opts, k, v)
    return run(opts), stream.getvalue()


def test_parsing_servers_and_overrides():
    a = build_parser().parse_args(["run", "views", "--out", "o", "--server", "h1:8188", "h2:8188", "--server",
                                   "http://h3", "--steps", "2", "--strength", "0.5", "--seed", "7", "--save-hints",
                                   "--comfy-arg=--bf16-unet", "--chunk", "2", "--cross-view", "extended"])
    opts = run_options(a)
    assert opts.servers == ["h1:8188", "h2:8188", "http://h3"]
    assert opts.overrides == {"preset": None, "steps": 2, "strength": 0.5, "seed": 7, "cross_view": "extended",
                              "subject": None, "template": None, "resolution": None, "save_hints": True}
    assert opts.comfy_args == ["--bf16-unet"] and opts.chunk == 2
    b = build_parser().parse_args(["run", "views", "--out", "o"])
    assert run_options(b).overrides["save_hints"] is None, "no flag: the workflow's own value stays"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "views"])  # --out is required
    c = build_parser().parse_args(["loop", "views", "--rounds", "2", "--refit-cmd", "a", "--render-cmd", "b"])
    assert (c.rounds, c.refit_cmd, c.render_cmd) == (2, "a", "b")


def test_unreachable_server_fails_fast_with_a_clear_message(viewset, workflow, tmp_path):
    t0 = time.monotonic()
    code, out = run_cli(["run", str(viewset), "--out", str(tmp_path / "o"), "--workflow", str(workflow),
                         "--server", f"127.0.0.1:{closed_port()}"], tmp_path)
    assert time.monotonic() - t0 < 5
    assert code == 2 and "is unreachable" in out and "127.0.0.1" in out
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["missing_views"] == [0, 1, 2] and not m["complete"]


def test_unroutable_server_fails_within_5s(viewset, workflow, tmp_path):
    t0 = time.monotonic()
    code, out = run_cli(["run", str(viewset), "--out", str(tmp_path / "o"), "--workflow", str(workflow),
                         "--server", "10.255.255.1:8188"], tmp_path)
    assert time.monotonic() - t0 < 5
    assert code == 2 and "ComfyUI server http://10.255.255.1:8188 is unreachable" in out


def test_canvas_workflow_is_refused(viewset, tmp_path):
    canvas = tmp_path / "canvas.json"
    canvas.write_text(json.dumps({"nodes": [], "links": [], "version": 0.4}))
    code, out = run_cli(["run", str(viewset), "--out", str(tmp_path / "o"), "--workflow", str(canvas),
                         "--server", "127.0.0.1:1"], tmp_path)
    assert code == 2 and "canvas (UI) format" in out and str(canvas) in out
    assert not (tmp_path / "o").exists(), "nothing is written before the workflow is accepted"


def test_override_without_its_node_is_reported(viewset, workflow, tmp_path):
    code, out = run_cli(["run", str(viewset), "--out", str(tmp_path / "o"), "--workflow", str(workflow),
                         "--steps", "2", "--server", "127.0.0.1:1"], tmp_path)
    assert code == 2 and "--steps: no LightningLoader node" in out


def test_unwritable_output_folder(viewset, workflow, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    code, out = run_cli(["run", str(viewset), "--out", str(blocker / "out"), "--workflow", str(workflow),
                         "--server", "127.0.0.1:1"], tmp_path)
    assert code == 2 and f"output folder {blocker / 'out'} is not writable" in out


def test_missing_viewset(workflow, tmp_path):
    code, out = run_cli(["run", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--workflow", str(workflow)],
                        tmp_path)
    assert code == 2 and "does not exist" in out


def test_nothing_to_do_needs_no_server(viewset, workflow, tmp_path):
    """A finished set reruns without contacting any server (the URL below would fail)."""
    from glimpse.files import files_digest
    from glimpse.runner import manifest as mf
    from glimpse.runner.viewset import check_set
    from glimpse.runner.workflow import load_workflow

    out = tmp_path / "o"
    opts = RunOptions(viewset, out, ["127.0.0.1:1"], str(workflow), stream=io.StringIO())
    user = {k: None for k in ("preset", "steps", "strength", "seed", "subject", "template", "resolution",
                              "save_hints")}
    params = mf.params_hash(load_workflow(workflow), user, files_digest(check_set(viewset, images_only=True).files(),
                                                                           contents=True))
    out.mkdir()
    m = mf.new({}, params, viewset=str(viewset), inputs_hash="", workflow="", overrides={}, views=[0, 1, 2],
               out_dir=out)
    for v in range(3):
        (out / f"view_{v:02d}.png").write_bytes(b"x")
        mf.record(m, v, params, [f"view_{v:02d}.png"])
    mf.save(m, out)
    assert run(opts) == 0
    assert "3 already done (skipped), 0 to run" in opts.stream.getvalue()


def test_main_returns_exit_status(viewset, tmp_path):
    assert main(["run", str(viewset), "--out", str(tmp_path / "o"), "--workflow", str(tmp_path / "x.json")]) == 2


def test_plain_progress_is_one_line_per_view():
    s = io.StringIO()
    p = Progress(4, 1, s, tty=False)
    p.start()
    p.step_update("step 1/4")
    p.views_done(1, "views 1")
    p.views_done(2)
    lines = s.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("views 2/4") and "s/view" in lines[0] and "ETA" in lines[0]
    assert lines[1].startswith("views 4/4")


def test_loop_placeholders():
    v = {"round": 2, "views_dir": "/a b", "enhanced_dir": "/e", "render_dir": "/r", "round_dir": "/w/round_2",
         "work_dir": "/w"}
    assert expand("fit --in {enhanced_dir} --src {views_dir} -r {round}", v) == "fit --in /e --src '/a b' -r 2"
    with pytest.raises(LoopError, match=r"unknown placeholder 'model'.*\{views_dir\}"):
        expand("fit {model}", v)


def test_work_pool_gives_whole_sets_to_servers_and_shares_a_lone_set():
    from glimpse.runner.run import SetJob, WorkPool

    def job(name):
        return SetJob(name, None, None, [], "", [], "", {}, {}, None)

    a, b = job("a"), job("b")
    pool = WorkPool()
    for j in (a, b):
        for views in ([0, 1], [2, 3], [4, 5]):
            pool.put((j, views))
    first = [pool.take("s1"), pool.take("s2"), pool.take("s1"), pool.take("s2")]
    assert [(j.name, v[0]) for j, v in first] == [("a", 0), ("b", 0), ("a", 2), ("b", 2)]
    pool.release("s2")  # s2 died: its set is free, s1 finishes its own first, then takes b
    assert [(j.name, v[0]) for j, v in (pool.take("s1"), pool.take("s1"))] == [("a", 4), ("b", 4)]
    assert pool.take("s1") is None and pool.empty()

    lone = WorkPool()
    for views in ([0], [1], [2]):
        lone.put((a, views))
    assert [lone.take(s)[1] for s in ("s1", "s2", "s2")] == [[0], [1], [2]], "one set is shared by both servers"


def test_node_errors_are_readable():
    from glimpse.runner.client import format_node_errors

    response = {
        "error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                  "details": ""},
        "node_errors": {
            "1": {"class_type": "LoadViewSet", "dependent_outputs": ["9"], "errors": [
                {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                 "details": f"{name} - view_07 depth is 512x512 but its image is 1024x1024",
                 "extra_info": {"input_name": name}} for name in ("path", "background", "strip_views")]},
            "4": {"class_type": "KSamplerAdvanced", "errors": [
                {"type": "value_not_in_list", "message": "Value not in list",
                 "details": "sampler_name: 'nope' not in ['euler']", "extra_info": {"input_name": "sampler_name"}}]},
        }}
    assert format_node_errors(response).splitlines() == [
        "Prompt outputs failed validation",
        "  node 1 (LoadViewSet): validation failed: view_07 depth is 512x512 but its image is 1024x1024",
        "  node 4 (KSamplerAdvanced) input 'sampler_name': Value not in list: sampler_name: 'nope' not in ['euler']",
    ]

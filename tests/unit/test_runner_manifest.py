"""Resume logic: params hash, which views count as done, what a new run's manifest keeps and lists as missing."""
import json

from glimpse.runner import manifest as mf

WF = {"1": {"class_type": "LoadViewSet", "inputs": {"path": "x"}}}


def test_params_hash_changes_with_workflow_overrides_and_inputs():
    h = mf.params_hash(WF, {"steps": 4, "seed": None}, "abc")
    assert h == mf.params_hash(WF, {"steps": 4}, "abc"), "unset overrides do not count"
    assert h != mf.params_hash(WF, {"steps": 2}, "abc")
    assert h != mf.params_hash(WF, {"steps": 4}, "abd")
    assert h != mf.params_hash({"1": {"class_type": "LoadViewSet", "inputs": {"path": "y"}}}, {"steps": 4}, "abc")


def _run(tmp_path, params, previous=None, views=range(4)):
    return mf.new(previous or {}, params, viewset="set", inputs_hash="ih", workflow="wf.json", overrides={},
                  views=list(views), out_dir=tmp_path)


def test_resume_keeps_finished_views_with_files_and_same_params(tmp_path):
    m = _run(tmp_path, "P")
    assert m["missing_views"] == [0, 1, 2, 3] and not m["complete"]
    for v in (0, 1, 2):
        for name in (f"view_{v:02d}.png", f"confidence_{v:02d}.png"):
            (tmp_path / name).write_bytes(b"x")
        mf.record(m, v, "P", [f"view_{v:02d}.png", f"confidence_{v:02d}.png"])
    assert m["missing_views"] == [3]
    mf.save(m, tmp_path)
    (tmp_path / "confidence_01.png").unlink()  # a lost output reruns that view only
    again = _run(tmp_path, "P", mf.load(tmp_path))
    assert again["missing_views"] == [1, 3] and sorted(again["views"]) == ["0", "2"]
    changed = _run(tmp_path, "Q", mf.load(tmp_path))
    assert changed["missing_views"] == [0, 1, 2, 3] and changed["views"] == {}


def test_complete_set_and_scores_carry_over(tmp_path):
    m = _run(tmp_path, "P", views=[0])
    (tmp_path / "view_00.png").write_bytes(b"x")
    mf.record(m, 0, "P", ["view_00.png"])
    assert m["complete"] and m["missing_views"] == []
    m["scores"] = {"consistency": 0.9}
    mf.save(m, tmp_path)
    again = _run(tmp_path, "P", mf.load(tmp_path), views=[0])
    assert again["complete"] and again["scores"] == {"consistency": 0.9}


def test_unreadable_manifest_counts_as_empty(tmp_path):
    (tmp_path / "manifest.json").write_text("{broken")
    assert mf.load(tmp_path) == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    assert mf.load(tmp_path) == {}

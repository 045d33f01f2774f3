"""The runner's workflow handling: override table by class + input, canvas-file refusal, name resolution, modes."""
import json

import pytest

from glimpse.runner.workflow import (OVERRIDES, OverrideError, WorkflowError, apply_overrides, load_workflow,
                                     resolve_workflow, workflow_mode)

SET_WF = {
    "1": {"class_type": "LoadViewSet", "inputs": {"path": "set", "views": "all", "resolution": 1024,
                                                  "settings": ["2", 0]}},
    "2": {"class_type": "MemoryPreset", "inputs": {"preset": "t4_balanced", "steps": "4", "strength": 0.75,
                                                          "resolution": 1024, "views_per_chunk": 1}},
    "3": {"class_type": "LightningLoader", "inputs": {"steps": "auto", "strength": 0.75, "settings": ["2", 0]}},
    "4": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 1, "model": ["3", 0]}},
    "5": {"class_type": "GlimpsePrompt", "inputs": {"subject": "a fox", "template": "default"}},
    "6": {"class_type": "SaveViewSet", "inputs": {"subfolder": "glimpse", "save_hints": False, "images": ["4", 0]}},
}


def test_every_option_lands_on_its_class_and_input():
    values = {"path": "glimpse/abc", "views": "4-7", "preset": "speed", "steps": 2, "strength": 0.5, "seed": 7,
              "subject": "a cat", "template": "product", "resolution": 768, "subfolder": "out/x", "save_hints": True}
    wf, applied = apply_overrides(SET_WF, values)
    assert wf["1"]["inputs"] == {"path": "glimpse/abc", "views": "4-7", "resolution": 768}
    # strength reaches the preset, which becomes custom with the speed preset's other values; the resolution goes to
    # LoadViewSet alone, whose settings link is cut (connected settings would win)
    assert wf["2"]["inputs"] == {"preset": "custom", "steps": "2", "strength": 0.5, "resolution": 768,
                                 "views_per_chunk": 4}
    assert wf["3"]["inputs"] == {"steps": "2", "strength": 0.5, "settings": ["2", 0]}
    assert wf["4"]["inputs"]["noise_seed"] == 7
    assert wf["5"]["inputs"] == {"subject": "a cat", "template": "product"}
    assert wf["6"]["inputs"]["subfolder"] == "out/x" and wf["6"]["inputs"]["save_hints"] is True
    assert len(applied) == len(values) + 3  # strength lands twice, the custom preset, the unwired settings
    assert SET_WF["1"]["inputs"]["views"] == "all", "the original workflow is not modified"


def test_none_values_are_not_applied():
    wf, applied = apply_overrides(SET_WF, {"steps": None, "seed": None})
    assert wf == SET_WF and applied == []


def test_missing_node_and_input_are_named():
    wf = {k: v for k, v in SET_WF.items() if v["class_type"] not in ("LightningLoader", "MemoryPreset")}
    with pytest.raises(OverrideError) as e:
        apply_overrides(wf, {"steps": 2, "seed": 3, "template": "product"}, "my.json")
    assert set(e.value.problems) == {"steps"}
    assert "--steps: no LightningLoader node; no MemoryPreset node" in str(e.value)
    assert "my.json" in str(e.value)
    wf2 = json.loads(json.dumps(SET_WF))
    del wf2["5"]["inputs"]["template"]
    with pytest.raises(OverrideError, match="GlimpsePrompt node 5 has no input 'template'"):
        apply_overrides(wf2, {"template": "x"})


def test_wired_input_is_not_overwritten():
    wf = json.loads(json.dumps(SET_WF))
    wf["4"]["inputs"]["noise_seed"] = ["9", 0]
    with pytest.raises(OverrideError, match="input 'noise_seed' is wired to node 9"):
        apply_overrides(wf, {"seed": 1})


def test_seed_falls_back_to_random_noise():
    wf = {"1": {"class_type": "RandomNoise", "inputs": {"noise_seed": 0}}}
    out, _ = apply_overrides(wf, {"seed": 42})
    assert out["1"]["inputs"]["noise_seed"] == 42


def test_named_preset_stays_named_without_field_overrides():
    wf, _ = apply_overrides(SET_WF, {"steps": 8, "seed": 1})
    assert wf["2"]["inputs"]["preset"] == "t4_balanced" and wf["3"]["inputs"]["steps"] == "8"


def test_override_table_has_one_entry_per_option():
    options = [o.option for o in OVERRIDES]
    assert len(options) == len(set(options))


def test_canvas_file_is_refused_with_a_hint(tmp_path):
    p = tmp_path / "canvas.json"
    p.write_text(json.dumps({"last_node_id": 3, "nodes": [{"id": 1, "type": "LoadImage"}], "links": []}))
    with pytest.raises(WorkflowError, match=r"canvas \(UI\) format.*Export \(API\)"):
        load_workflow(p)


@pytest.mark.parametrize("text,match", [("{not json", "not valid JSON"), ("[]", "not an API-format workflow"),
                                        ('{"1": {"inputs": {}}}', "node '1' has no class_type")])
def test_other_non_api_files(tmp_path, text, match):
    p = tmp_path / "wf.json"
    p.write_text(text)
    with pytest.raises(WorkflowError, match=match):
        load_workflow(p)


def test_resolve_name_file_and_missing(tmp_path, monkeypatch):
    (tmp_path / "glimpse_enhance_speed.json").write_text("{}")
    monkeypatch.setenv("GLIMPSE_WORKFLOWS", str(tmp_path))
    assert resolve_workflow("speed") == tmp_path / "glimpse_enhance_speed.json"
    f = tmp_path / "mine.json"
    f.write_text("{}")
    assert resolve_workflow(str(f)) == f
    with pytest.raises(WorkflowError, match="no bundled workflow named 'nope'.*pass a .json file path"):
        resolve_workflow("nope")
    with pytest.raises(WorkflowError, match="does not exist"):
        resolve_workflow(str(tmp_path / "absent.json"))


def test_modes():
    assert workflow_mode(SET_WF) == "set"
    per_view = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    assert workflow_mode(per_view) == "per-view"
    with pytest.raises(WorkflowError, match="several LoadImage"):
        workflow_mode({**per_view, "3": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}})
    with pytest.raises(WorkflowError, match="neither a LoadViewSet"):
        workflow_mode({"1": {"class_type": "EmptyLatentImage", "inputs": {}}})

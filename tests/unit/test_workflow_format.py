"""Canvas <-> API workflow conversion (tools/workflow_format.py, tools/node_widgets.py) against core node definitions
from a real ComfyUI v0.3.64 ``/object_info`` (tests/unit/data/object_info_core.json, tooltips removed) and, when the
package is installed, every canvas template ComfyUI ships (comfyui_workflow_templates)."""
import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `python -m pytest` already has it; a bare `pytest` may not
    sys.path.insert(0, str(REPO))

from tools.node_widgets import widget_slots  # noqa: E402
from tools.workflow_format import (  # noqa: E402
    UnknownNodeTypes,
    WorkflowFormatError,
    api_to_canvas,
    canvas_to_api,
    group_bounding,
    is_canvas,
    node_types,
)

OBJECT_INFO = json.loads((Path(__file__).parent / "data" / "object_info_core.json").read_text())

# The frontend's default graph, in API format as its Export (API) writes it.
TXT2IMG = {
    "3": {"inputs": {"model": ["4", 0], "seed": 156680208700286, "steps": 20, "cfg": 8, "sampler_name": "euler",
                     "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
                     "denoise": 1}, "class_type": "KSampler", "_meta": {"title": "KSampler"}},
    "4": {"inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}, "class_type": "CheckpointLoaderSimple",
          "_meta": {"title": "Load Checkpoint"}},
    "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage",
          "_meta": {"title": "Empty Latent Image"}},
    "6": {"inputs": {"text": "a glass bottle", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
          "_meta": {"title": "Positive"}},
    "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode",
          "_meta": {"title": "VAE Decode"}},
    "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage",
          "_meta": {"title": "Save Image"}},
}


def by_id(canvas):
    return {n["id"]: n for n in canvas["nodes"]}


def test_widget_slots_follow_the_frontend():
    # seed is followed by its control value; sockets (model, positive ...) have no widget entry
    assert widget_slots(OBJECT_INFO["KSampler"]) == ["seed", None, "steps", "cfg", "sampler_name", "scheduler",
                                                     "denoise"]
    assert widget_slots(OBJECT_INFO["KSamplerAdvanced"]) == [
        "add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step",
        "return_with_leftover_noise"]
    assert widget_slots(OBJECT_INFO["RandomNoise"]) == ["noise_seed", None]
    assert widget_slots(OBJECT_INFO["LoadImage"]) == ["image", None]  # the upload button's entry
    assert widget_slots(OBJECT_INFO["SamplerCustomAdvanced"]) == []


def test_widget_slots_options():
    spec = {"input": {"required": {"b": ["INT", {}], "a": ["STRING", {"forceInput": True}],
                                   "seed": ["INT", {"control_after_generate": False}],
                                   "mode": ["COMBO", {"options": ["x", "y"], "control_after_generate": True}]},
                      "optional": {"o": [["p", "q"]], "img": ["IMAGE"]}},
            "input_order": {"required": ["mode", "seed", "a", "b"], "optional": ["img", "o"]}}
    # input_order wins over dict order; forceInput is a socket; an explicit False removes the seed's control
    assert widget_slots(spec) == ["mode", None, "seed", "b", "o"]
    del spec["input"]["required"]["seed"][1]["control_after_generate"]
    assert widget_slots(spec) == ["mode", None, "seed", None, "b", "o"]  # the legacy name rule


def test_api_to_canvas_matches_the_frontend_layout():
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO, {"nodes": {"3": {"pos": [10, 20], "size": [300, 400]}}})
    assert is_canvas(canvas) and canvas["version"] == 0.4
    nodes = by_id(canvas)
    ks = nodes[3]
    assert ks["pos"] == [10, 20] and ks["size"] == [300, 400]
    assert [i["name"] for i in ks["inputs"]] == ["model", "positive", "negative", "latent_image"]
    assert ks["widgets_values"] == [156680208700286, "fixed", 20, 8, "euler", "normal", 1]
    assert nodes[6]["title"] == "Positive" and "title" not in nodes[7]
    assert nodes[9]["widgets_values"] == ["ComfyUI"]
    assert nodes[9]["outputs"] == []
    links = {tuple(link[1:5]): link for link in canvas["links"]}
    assert (4, 1, 6, 0) in links and links[(4, 1, 6, 0)][5] == "CLIP"
    assert (5, 0, 3, 3) in links  # latent_image is the KSampler's 4th socket
    assert canvas["last_link_id"] == len(canvas["links"]) == 9
    ckpt_out = nodes[4]["outputs"]
    assert [o["name"] for o in ckpt_out] == ["MODEL", "CLIP", "VAE"] and len(ckpt_out[1]["links"]) == 2
    # order is a topological order: the loader first, SaveImage last
    assert nodes[4]["order"] == 0 and nodes[9]["order"] == 6


def test_round_trip_is_exact():
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO)
    assert canvas_to_api(canvas, OBJECT_INFO) == TXT2IMG
    again = api_to_canvas(canvas_to_api(canvas, OBJECT_INFO), OBJECT_INFO)
    assert again == canvas


def test_linked_widget_inputs_become_widget_sockets():
    api = {
        "1": {"inputs": {"noise_seed": 7}, "class_type": "RandomNoise", "_meta": {"title": "RandomNoise"}},
        "2": {"inputs": {"add_noise": "enable", "noise_seed": 5, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                         "scheduler": "sgm_uniform", "start_at_step": ["3", 0], "end_at_step": 10000,
                         "return_with_leftover_noise": "disable"},
              "class_type": "KSamplerAdvanced", "_meta": {"title": "KSampler (Advanced)"}},
        "3": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptyLatentImage",
              "_meta": {"title": "Empty Latent Image"}},
    }
    # (an INT from a LATENT output is nonsense to the server but fine for the format)
    canvas = api_to_canvas(api, OBJECT_INFO)
    ks = by_id(canvas)[2]
    names = [i["name"] for i in ks["inputs"]]
    assert names == ["model", "positive", "negative", "latent_image", "start_at_step"]
    assert ks["inputs"][4]["widget"] == {"name": "start_at_step"} and ks["inputs"][4]["link"] == 1
    assert canvas["links"] == [[1, 3, 0, 2, 4, "LATENT"]]
    # a linked widget keeps a placeholder value (its default), which the API conversion does not use
    assert ks["widgets_values"][7] == 0
    assert canvas_to_api(canvas, OBJECT_INFO) == api


def test_notes_groups_and_ds():
    lay = {"notes": [{"text": "# Models\nput x in y", "pos": [-400, 0], "size": [300, 200]},
                     {"text": "plain", "pos": [-400, 300], "type": "Note", "title": "Read me"}],
           "groups": [{"title": "Sampling", "nodes": [3, 5], "color": "#b58b2a"},
                      {"title": "Notes", "nodes": [10, 11]}],
           "nodes": {"3": {"pos": [500, 100]}, "5": {"pos": [100, 400]}}, "ds": {"scale": 0.5, "offset": [1, 2]}}
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO, lay, name="t")
    nodes = by_id(canvas)
    assert nodes[10]["type"] == "MarkdownNote" and nodes[10]["widgets_values"] == ["# Models\nput x in y"]
    assert nodes[11]["type"] == "Note" and nodes[11]["title"] == "Read me"
    assert canvas["last_node_id"] == 11
    g = canvas["groups"][0]
    x, y, w, h = g["bounding"]
    for n in (nodes[3], nodes[5]):
        assert x <= n["pos"][0] and n["pos"][0] + n["size"][0] <= x + w
        assert y < n["pos"][1] - 30 and n["pos"][1] + n["size"][1] <= y + h  # title bar inside too
    assert g["title"] == "Sampling" and g["color"] == "#b58b2a"
    assert canvas["groups"][1]["bounding"] == group_bounding([nodes[10], nodes[11]])
    assert canvas["extra"]["ds"] == {"scale": 0.5, "offset": [1, 2]}
    assert canvas_to_api(canvas, OBJECT_INFO) == TXT2IMG, "notes never reach the API"
    assert api_to_canvas(TXT2IMG, OBJECT_INFO, lay, name="t")["id"] == canvas["id"], "a stable id per name"


def _canvas_with_frontend_only_nodes():
    """TXT2IMG on the canvas with a Reroute on the VAE, a PrimitiveNode on steps, a muted and a bypassed node."""
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO)
    nodes = by_id(canvas)
    links = canvas["links"]
    # Reroute 20 between the checkpoint's VAE and VAEDecode's vae
    vae_link = next(link for link in links if link[3] == 8 and link[4] == 1)
    links.append([100, 4, 2, 20, 0, "VAE"])
    vae_link[1], vae_link[2] = 20, 0
    canvas["nodes"].append({"id": 20, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "mode": 0,
                            "inputs": [{"name": "", "type": "*", "link": 100}],
                            "outputs": [{"name": "", "type": "VAE", "links": [vae_link[0]]}], "properties": {}})
    # a PrimitiveNode drives KSampler steps: the widget keeps the value, the API has no link
    links.append([101, 21, 0, 3, 4, "INT"])
    nodes[3]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 101})
    canvas["nodes"].append({"id": 21, "type": "PrimitiveNode", "pos": [0, 0], "size": [200, 80], "mode": 0,
                            "outputs": [{"name": "INT", "type": "INT", "links": [101]}], "widgets_values": [20]})
    # a bypassed ImageScale between VAEDecode and SaveImage, and a muted PreviewImage
    save_link = next(link for link in links if link[3] == 9)
    links.append([102, 22, 0, 9, 0, "IMAGE"])
    save_link[3], save_link[4] = 22, 0
    by_id(canvas)[9]["inputs"][0]["link"] = 102
    canvas["nodes"].append({"id": 22, "type": "ImageScale", "pos": [0, 0], "size": [200, 100], "mode": 4,
                            "inputs": [{"name": "image", "type": "IMAGE", "link": save_link[0]}],
                            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [102]}],
                            "widgets_values": ["nearest-exact", 512, 512, "disabled"]})
    canvas["nodes"].append({"id": 23, "type": "PreviewImage", "pos": [0, 0], "size": [200, 100], "mode": 2,
                            "inputs": [{"name": "images", "type": "IMAGE", "link": None}], "outputs": []})
    canvas["nodes"].append({"id": 24, "type": "MarkdownNote", "pos": [0, 0], "size": [200, 100], "mode": 0,
                            "widgets_values": ["# hello"]})
    return canvas


def test_frontend_only_and_disabled_nodes():
    api = canvas_to_api(_canvas_with_frontend_only_nodes(), OBJECT_INFO)
    assert api == TXT2IMG
    assert set(node_types(_canvas_with_frontend_only_nodes())) == {str(i) for i in (3, 4, 5, 6, 7, 8, 9, 22, 23)}


def test_missing_widget_values_take_defaults_and_dict_values_work():
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO)
    by_id(canvas)[3]["widgets_values"] = [1, "fixed", 5]  # saved before cfg ... denoise existed
    api = canvas_to_api(canvas, OBJECT_INFO)
    assert api["3"]["inputs"]["steps"] == 5 and api["3"]["inputs"]["cfg"] == 8.0
    assert api["3"]["inputs"]["sampler_name"] == "euler" and api["3"]["inputs"]["denoise"] == 1.0
    by_id(canvas)[5]["widgets_values"] = {"width": 64, "height": 32, "batch_size": 2}
    assert canvas_to_api(canvas, OBJECT_INFO)["5"]["inputs"] == {"width": 64, "height": 32, "batch_size": 2}


def test_errors_name_what_is_wrong():
    with pytest.raises(WorkflowFormatError, match="not a canvas workflow"):
        canvas_to_api(TXT2IMG, OBJECT_INFO)
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO)
    by_id(canvas)[8]["type"] = "GlimpseNotInstalled"
    by_id(canvas)[9]["type"] = "GlimpseNotInstalled"
    with pytest.raises(UnknownNodeTypes, match=r"GlimpseNotInstalled \(node 8, 9\)") as e:
        canvas_to_api(canvas, OBJECT_INFO)
    assert e.value.types == {"GlimpseNotInstalled": ["8", "9"]}
    bad = copy.deepcopy(TXT2IMG)
    bad["8"]["inputs"]["vae"] = ["44", 2]
    with pytest.raises(WorkflowFormatError, match="links to node 44, which is missing"):
        api_to_canvas(bad, OBJECT_INFO)
    bad = copy.deepcopy(TXT2IMG)
    bad["8"]["inputs"]["vae"] = ["4", 3]
    with pytest.raises(WorkflowFormatError, match=r"output 3 of node 4 \(CheckpointLoaderSimple\), which has 3"):
        api_to_canvas(bad, OBJECT_INFO)
    bad = copy.deepcopy(TXT2IMG)
    bad["5"]["inputs"]["depth"] = 3
    with pytest.raises(WorkflowFormatError, match=r"node 5 \(EmptyLatentImage\) has inputs \['depth'\]"):
        api_to_canvas(bad, OBJECT_INFO)
    with pytest.raises(WorkflowFormatError, match="'a' is not a number"):
        api_to_canvas({"a": TXT2IMG["4"]}, OBJECT_INFO)
    canvas = api_to_canvas(TXT2IMG, OBJECT_INFO)
    canvas["links"] = [link for link in canvas["links"] if link[3] != 9]
    with pytest.raises(WorkflowFormatError, match="missing from the links list"):
        canvas_to_api(canvas, OBJECT_INFO)


def _templates():
    spec = importlib.util.find_spec("comfyui_workflow_templates")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted((Path(list(spec.submodule_search_locations)[0]) / "templates").glob("*.json"))


@pytest.mark.skipif(not _templates(), reason="comfyui_workflow_templates (ComfyUI's template package) not installed")
def test_shipped_templates_round_trip():
    """Every shipped template whose node types are all in the core subset converts, and its API form survives a
    trip through the canvas format unchanged."""
    checked = []
    for path in _templates():
        data = json.loads(path.read_text(encoding="utf-8"))
        if not is_canvas(data) or data.get("definitions"):
            continue
        if set(node_types(data).values()) - set(OBJECT_INFO):
            continue
        api = canvas_to_api(data, OBJECT_INFO)
        assert api, path.name
        assert canvas_to_api(api_to_canvas(api, OBJECT_INFO), OBJECT_INFO) == api, path.name
        checked.append(path.name)
    assert "default.json" in checked and len(checked) >= 3, checked

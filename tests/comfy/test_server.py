"""A real ComfyUI server with the pack installed: node listing, a Vega graph through POST /prompt, bad input."""
import json
import re
from pathlib import Path

import pytest
from PIL import Image

SEED_TEMPLATES = ["default", "photorealistic", "product", "character", "environment", "object", "anime_style"]


CHECKPOINT = "sd_xl_base_1.0.safetensors"  # the official name; the fixture set links the Vega-layout model under it


def vega_checkpoint(comfy_server) -> str:
    options = comfy_server.object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"]["input"]["required"]
    assert CHECKPOINT in options["ckpt_name"][0]
    return CHECKPOINT


def prompt_graph(ckpt: str, **glimpse_inputs) -> dict:
    """CheckpointLoaderSimple -> GlimpsePrompt -> KSamplerAdvanced (Lightning grid: euler, sgm_uniform, cfg 1)
    -> VAEDecode -> SaveImage, 64x64."""
    inputs = {"clip": ["1", 1], "template": "object", "subject": "a low-poly fox", "extra": ""} | glimpse_inputs
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "GlimpsePrompt", "inputs": inputs},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": "enable", "noise_seed": 7, "steps": 4, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "sgm_uniform", "positive": ["2", 0], "negative": ["2", 1],
            "latent_image": ["3", 0], "start_at_step": 0, "end_at_step": 4, "return_with_leftover_noise": "disable"}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "glimpse_test/prompt"}},
    }


def text_graph(ckpt: str, **glimpse_inputs) -> dict:
    """GlimpsePrompt's text into PreviewAny: validated and run without sampling."""
    inputs = {"clip": ["1", 1], "template": "default", "subject": "", "extra": ""} | glimpse_inputs
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "GlimpsePrompt", "inputs": inputs},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}},
    }


def test_object_info_lists_every_pack_node_with_tooltips(comfy_server, pack_node_ids):
    info = comfy_server.object_info()
    assert pack_node_ids <= set(info), f"missing from /object_info: {sorted(pack_node_ids - set(info))}"
    assert "GlimpsePrompt" in pack_node_ids
    for node_id in sorted(pack_node_ids):
        node = info[node_id]
        assert node["python_module"] == "custom_nodes.glimpse-enhance"
        assert node["category"].startswith("Glimpse") and node["description"], node_id
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node_id} input {name} has no tooltip"
        assert len(node["output_tooltips"]) == len(node["output"]) and all(node["output_tooltips"]), node_id
    glimpse = info["GlimpsePrompt"]
    assert glimpse["input"]["required"]["template"][1]["options"][:7] == SEED_TEMPLATES
    assert glimpse["output"] == ["CONDITIONING", "CONDITIONING", "STRING", "STRING"]
    assert "GLIMPSE_CAMERAS" == glimpse["input"]["optional"]["cameras"][0]


def test_vega_graph_through_post_prompt_saves_a_png(comfy_server):
    ckpt = vega_checkpoint(comfy_server)
    comfy_server.unload_models()  # earlier tests may hold this checkpoint, or another UNet, loaded
    log_start = len(comfy_server.log())
    entry = comfy_server.queue(prompt_graph(ckpt))
    comfy_server.timings["vega graph, first prompt"] = comfy_server.last_prompt_s
    assert entry["status"]["status_str"] == "success"
    images = entry["outputs"]["6"]["images"]
    assert len(images) == 1
    path = comfy_server.output_dir / images[0]["subfolder"] / images[0]["filename"]
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (64, 64)
        assert any(lo < hi for lo, hi in png.convert("RGB").getextrema())  # a decoded latent, not a constant fill
    # ComfyUI logs the model class it detected (Segmind_Vega's model class is SDXL) and the size it loads: the Vega
    # UNet is about 2.8 GiB in fp32, the full SDXL UNet about 9.6 GiB.
    log = comfy_server.log()
    assert "model_type EPS" in log and "Requested to load SDXLClipModel" in log
    # Only this prompt's own UNet load tells its size: earlier tests load other UNets (fp8, LoRA-patched) first.
    loaded = re.search(r"^Requested to load SDXL\nloaded completely \S+ ([0-9.]+) ", log[log_start:], re.M)
    assert loaded, "the server log does not report loading an SDXL UNet"
    assert 2000 < float(loaded.group(1)) < 4000, f"UNet of {loaded.group(1)} MiB is not the Vega layout"

    comfy_server.queue(prompt_graph(ckpt))  # identical prompt: served from cache
    comfy_server.timings["vega graph, cached"] = comfy_server.last_prompt_s


@pytest.fixture
def server_prompt_folder(comfy_server) -> Path:
    folder = comfy_server.base_dir / "models" / "glimpse_prompts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def rejection(comfy_server, prompt) -> str:
    with pytest.raises(comfy_server.PromptError) as e:
        comfy_server.queue(prompt)
    text = str(e.value)
    assert "Traceback" not in json.dumps(e.value.body)
    assert list(e.value.node_errors) == ["2"], text
    return text


def test_unknown_template_is_rejected_with_a_clear_message(comfy_server):
    text = rejection(comfy_server, text_graph(vega_checkpoint(comfy_server), template="nope"))
    assert "unknown prompt template 'nope' (built-in: default, photorealistic, product" in text


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("srv_broken.json", b'{"templates": [}', "srv_broken.json is not valid JSON: Expecting value at line 1"),
        ("srv_latin1.json", b'{"templates": {"\xe9t\xe9": {"positive": "x"}}}',
         "srv_latin1.json is not UTF-8 text (byte 0xe9 at offset 16)"),
        ("srv_shape.json", b'{"prompts": {}}', 'srv_shape.json must hold a JSON object with a "templates" object'),
    ],
)
def test_malformed_user_template_file_is_rejected_naming_file_and_problem(comfy_server, server_prompt_folder, name,
                                                                          data, expected):
    (server_prompt_folder / name).write_bytes(data)
    text = rejection(comfy_server, text_graph(vega_checkpoint(comfy_server), user_templates=name))
    assert expected in text


def test_empty_subject_and_slotless_user_template_run(comfy_server, server_prompt_folder):
    (server_prompt_folder / "srv_plain.json").write_text(
        json.dumps({"templates": {"plain": {"positive": "clean render"}}}), encoding="utf-8")
    ckpt = vega_checkpoint(comfy_server)
    entry = comfy_server.queue(text_graph(ckpt, subject="", template="default"))
    assert entry["outputs"]["3"]["text"][0].startswith("highly detailed 3D render, sharp focus")
    entry = comfy_server.queue(text_graph(ckpt, subject="a fox", template="plain", user_templates="srv_plain.json"))
    assert entry["outputs"]["3"]["text"][0] == "a fox, clean render"


@pytest.mark.allow_comfy_warnings("invalid value encountered")
def test_nan_pixels_reach_the_server_log_check(comfy_server):
    """A NaN latent decoded and saved by the server leaves numpy's cast warning in the log, which fails any test that
    does not allow it (the harness runs the server with that warning set to 'always')."""
    import time

    import requests

    start = len(comfy_server.log())
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": vega_checkpoint(comfy_server)}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "LatentMultiply", "inputs": {"samples": ["2", 0], "multiplier": float("nan")}},
        "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "glimpse_test/nan"}},
    }
    # requests refuses NaN in json=, the server's json.loads takes it: post the text and poll /history.
    r = requests.post(comfy_server.url + "/prompt", data=json.dumps({"prompt": prompt}),
                      headers={"Content-Type": "application/json"}, timeout=60)
    r.raise_for_status()
    prompt_id = r.json()["prompt_id"]
    deadline = time.monotonic() + 300
    while prompt_id not in requests.get(f"{comfy_server.url}/history/{prompt_id}", timeout=60).json():
        assert time.monotonic() < deadline, comfy_server.tail()
        time.sleep(0.5)
    assert "invalid value encountered" in comfy_server.log()[start:]

"""ConfidenceBlend, ViewConsistency and SaveViewSet in a real ComfyUI, on the bundled fox sample (samples/fox).

In-process: the three nodes on LoadViewSet's outputs (the "enhanced" views are the renders with red and blue
swapped, so every taken pixel is visibly different), files and metadata on disk, and SaveViewSet called per chunk
as ComfyUI maps it over LoadViewSet's list of chunks. Server: the graph with LoadViewSet's chunks of 4 views
(ConfidenceBlend and SaveViewSet run per chunk, ViewConsistency takes the whole list), queued with a workflow in
extra_data, so the PNGs carry both the prompt and the workflow like core SaveImage's.
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

FOX = Path(__file__).resolve().parents[2] / "samples" / "fox"


@pytest.fixture(scope="module")
def fox(comfy):
    images, mask, depth, cameras, count = comfy.run("LoadViewSet", path=str(FOX), background="#808080",
                                                    resolution=256, views_per_chunk=16, strip_views=0,
                                                    depth_png_scale=0.0)
    assert len(images) == 1  # one chunk of 16 views
    return SimpleNamespace(images=images[0], mask=mask[0], depth=depth[0], cameras=cameras[0], count=count)


def blend(comfy, fox, **kw):
    enhanced = fox.images.flip(-1).contiguous()
    out, conf, preview = comfy.run("ConfidenceBlend", original=fox.images, enhanced=enhanced, mask=fox.mask,
                                   depth=fox.depth, cameras=fox.cameras, **kw)
    return enhanced, out, conf, preview


def test_confidence_blend_node(comfy, fox):
    enhanced, out, conf, preview = blend(comfy, fox)
    assert out.shape == fox.images.shape and conf.shape == fox.mask.shape and preview.shape == fox.images.shape
    one, zero = conf == 1, conf == 0
    assert one.sum() > 1000 and zero.sum() > 1000 and ((conf > 0) & (conf < 1)).sum() > 100
    assert torch.equal(out[one], enhanced[one])  # trusted: the enhanced value exactly
    assert torch.equal(out[zero], fox.images[zero])  # untrusted: the original exactly
    assert torch.equal(out[fox.mask == 0], fox.images[fox.mask == 0])  # background as it was
    assert (conf[fox.mask <= 0.5] == 0).all()
    # threshold 0 with every signal ignored trusts every opaque pixel; a higher threshold trusts fewer
    _, _, all_conf, _ = blend(comfy, fox, threshold=0.0, opacity_weight=0.0, edge_weight=0.0, grazing_weight=0.0,
                              feather_radius=0)
    assert torch.equal(all_conf == 1, fox.mask > 0.5)
    _, _, strict, _ = blend(comfy, fox, threshold=0.95)
    assert (strict == 1).sum() < one.sum()


def test_confidence_blend_resizes_the_original_to_the_enhanced_size(comfy, fox):
    big = torch.nn.functional.interpolate(fox.images.movedim(-1, 1), size=(512, 512), mode="bilinear").movedim(1, -1)
    out, conf, _ = comfy.run("ConfidenceBlend", original=fox.images, enhanced=big, mask=fox.mask, depth=fox.depth,
                             cameras=fox.cameras)
    assert out.shape == (16, 512, 512, 3) and conf.shape == (16, 512, 512) and (conf == 1).any()


def test_confidence_blend_bad_counts(comfy, fox):
    with pytest.raises(ValueError, match="16 enhanced views but 15 in original"):
        comfy.run("ConfidenceBlend", original=fox.images[:15], enhanced=fox.images, mask=fox.mask, depth=fox.depth,
                  cameras=fox.cameras)


def test_view_consistency_node(comfy, fox):
    _, out, _, _ = blend(comfy, fox)
    result = comfy.run("ViewConsistency", views=out, depth=fox.depth, cameras=fox.cameras, mask=fox.mask,
                       reference=fox.images)
    scores = json.loads(result[0])
    assert scores["consistency"]["pairs_scored"] == 32 and len(scores["per_view"]) == 16
    assert scores["reference"]["consistency"]["psnr"] > 30
    text = result.ui["text"][0]
    assert text.startswith("consistency: PSNR") and "sharpness gain" in text
    # without depth it falls back and says so
    no_depth = json.loads(comfy.run("ViewConsistency", views=fox.images, mask=fox.mask)[0])
    assert no_depth["consistency"] is None and "no depth" in no_depth["notes"][0]


def read_png(path: Path):
    with Image.open(path) as im:
        im.load()
        return im.mode, dict(im.text), np.asarray(im)


def test_save_view_set_node(comfy, fox):
    _, out, conf, _ = blend(comfy, fox)
    scores = comfy.run("ViewConsistency", views=out, depth=fox.depth, cameras=fox.cameras, mask=fox.mask,
                       reference=fox.images)[0]
    sub = f"tests/fox-{uuid.uuid4().hex[:6]}"
    result = comfy.run("SaveViewSet", images=out, subfolder=sub, mask=fox.mask, confidence=conf,
                       cameras=fox.cameras, scores=scores)
    folder = comfy.output_dir / sub
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([f"view_{i:02d}.png" for i in range(16)] + [f"confidence_{i:02d}.png" for i in range(16)]
                           + ["cameras.json", "manifest.json"])
    mode, _, px = read_png(folder / "view_03.png")
    assert mode == "RGBA" and px.shape == (256, 256, 4)
    assert np.array_equal(px[..., 3], (fox.mask[3] * 255).round().byte().numpy())
    assert np.array_equal(px[..., :3], (out[3] * 255).round().byte().numpy())
    mode, _, cpx = read_png(folder / "confidence_03.png")
    assert mode == "L" and np.array_equal(cpx, (conf[3] * 255).round().byte().numpy())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["scores"] == json.loads(scores) and len(manifest["views"]) == 16
    assert manifest["node"]["subfolder"] == sub
    cams = json.loads((folder / "cameras.json").read_text())
    assert len(cams["views"]) == 16 and cams["image_size"] == [256, 256]
    ui_images = result.ui["images"]
    assert {"filename": "view_00.png", "subfolder": sub, "type": "output"} in ui_images
    # per chunk, as ComfyUI maps SaveViewSet over LoadViewSet's chunks: one folder, one manifest for the whole set
    chunked = sub + "-chunks"
    chunks = comfy.run("LoadViewSet", path=str(FOX), resolution=256, views_per_chunk=6)
    assert [c.shape[0] for c in chunks[0]] == [6, 6, 4]
    for images, mask, cams in zip(chunks[0], chunks[1], chunks[3]):
        comfy.run("SaveViewSet", images=images, subfolder=chunked, mask=mask, cameras=cams)
    merged = json.loads((comfy.output_dir / chunked / "manifest.json").read_text())
    assert [v["index"] for v in merged["views"]] == list(range(16))
    assert [c["views"] for c in merged["chunks"]] == [list(range(6)), list(range(6, 12)), list(range(12, 16))]
    assert len(json.loads((comfy.output_dir / chunked / "cameras.json").read_text())["views"]) == 16
    # a second save never overwrites: it goes to a new folder
    comfy.run("SaveViewSet", images=out, subfolder=sub, mask=fox.mask, cameras=fox.cameras)
    assert (comfy.output_dir / f"{sub}_001" / "view_00.png").is_file()
    with pytest.raises(FileExistsError, match="already holds view_00.png"):
        comfy.run("SaveViewSet", images=out, subfolder=sub, overwrite="refuse")
    for bad in ("../escape", "/tmp/escape"):
        with pytest.raises(ValueError, match="'..'|absolute"):
            comfy.run("SaveViewSet", images=out, subfolder=bad)
    with pytest.raises(ValueError, match="save_hints is on but no hints are connected"):
        comfy.run("SaveViewSet", images=out, subfolder=sub + "-hints", save_hints=True)


@pytest.mark.server
def test_graph_on_a_server_embeds_prompt_and_workflow(comfy_server):
    import requests

    sub = f"tests/server-{uuid.uuid4().hex[:6]}"
    prompt = {
        "1": {"class_type": "LoadViewSet", "inputs": {"path": str(FOX), "views": "all", "background": "#808080",
                                                      "resolution": 128, "views_per_chunk": 4, "strip_views": 0,
                                                      "depth_png_scale": 0.0}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "ConfidenceBlend", "inputs": {
            "original": ["1", 0], "enhanced": ["2", 0], "mask": ["1", 1], "depth": ["1", 2], "cameras": ["1", 3],
            "threshold": 0.6, "feather_radius": 4, "opacity_weight": 1.0, "edge_weight": 1.0, "grazing_weight": 1.0,
            "edge_radius": 4}},
        "4": {"class_type": "ViewConsistency", "inputs": {"views": ["3", 0], "depth": ["1", 2], "cameras": ["1", 3],
                                                          "mask": ["1", 1], "reference": ["1", 0]}},
        "5": {"class_type": "SaveViewSet", "inputs": {"images": ["3", 0], "subfolder": sub, "mask": ["1", 1],
                                                      "confidence": ["3", 1], "cameras": ["1", 3], "scores": ["4", 0],
                                                      "save_hints": False, "overwrite": "new folder",
                                                      "hash_models": False}},
    }
    workflow = {"nodes": [{"id": 5, "type": "SaveViewSet"}], "links": [], "version": 0.4}
    r = requests.post(comfy_server.url + "/prompt",
                      json={"prompt": prompt, "client_id": uuid.uuid4().hex,
                            "extra_data": {"extra_pnginfo": {"workflow": workflow}}}, timeout=60)
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        history = requests.get(f"{comfy_server.url}/history/{prompt_id}", timeout=30).json()
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            break
        time.sleep(0.5)
    entry = history[prompt_id]
    assert entry["status"]["status_str"] == "success", entry["status"]
    outputs = entry["outputs"]
    assert outputs["4"]["text"][0].startswith("consistency: PSNR")
    saved = outputs["5"]["images"]
    assert {"filename": "view_00.png", "subfolder": sub, "type": "output"} in saved
    _, text, _ = read_png(comfy_server.output_dir / sub / "view_07.png")
    assert json.loads(text["prompt"])["5"]["class_type"] == "SaveViewSet"
    assert json.loads(text["workflow"]) == workflow
    manifest = json.loads((comfy_server.output_dir / sub / "manifest.json").read_text())
    assert manifest["parameters"]["3 ConfidenceBlend"]["threshold"] == 0.6
    assert manifest["scores"]["consistency"]["pairs_scored"] == 32  # ViewConsistency saw all 4 chunks
    assert [v["index"] for v in manifest["views"]] == list(range(16)) and len(manifest["chunks"]) == 4
    info = comfy_server.object_info("SaveViewSet")["SaveViewSet"]
    assert info["output_node"] is True

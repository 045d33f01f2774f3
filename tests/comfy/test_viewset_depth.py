"""LoadViewSet and DepthControlNet in a real ComfyUI, on the fox sample set (samples/fox) at 64x64, with the Vega-size
SDXL fixture and each fixture depth ControlNet (full, small, T2I-Adapter, ControlNet Union promax through core
SetUnionControlNetType), plus the monocular path with the fixture Depth Anything estimator.

Graph: LoadViewSet -> VAEEncode; CLIPTextEncode x2; ControlNetLoader [-> SetUnionControlNetType] -> DepthControlNet ->
KSamplerAdvanced. The control counts as applied when the sampled latent differs from the same graph at strength 0.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from glimpse.types import DepthMaps

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "fox"
CHECKPOINT = "sd_xl_base_1.0.safetensors"
CONTROLNETS = {
    "full": "controlnet-depth-sdxl-1.0.safetensors",
    "small": "controlnet-depth-sdxl-1.0-small.safetensors",
    "t2i-adapter": "t2i-adapter-depth-midas-sdxl-1.0.safetensors",
}
UNION = "controlnet-union-sdxl-1.0_promax.safetensors"
ESTIMATOR = "depth-anything-small"
VIEWS = 4  # views sampled per graph (all 16 are loaded and hinted)


@pytest.fixture(scope="module")
def viewset(comfy):
    images, mask, depth, cameras, count = comfy.run("LoadViewSet", path=str(SAMPLE), views="all",
                                                    background="#808080", resolution=64, views_per_chunk=16,
                                                    strip_views=0, depth_png_scale=0.0)
    assert len(images) == len(mask) == len(depth) == len(cameras) == 1  # lists of chunks: one chunk of 16
    return SimpleNamespace(images=images[0], mask=mask[0], depth=depth[0], cameras=cameras[0], count=count)


@pytest.fixture(scope="module")
def vega(comfy):
    model, clip, vae = comfy.run("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    pos = comfy.run("CLIPTextEncode", clip=clip, text="a sharp photo of a low-poly fox")[0]
    neg = comfy.run("CLIPTextEncode", clip=clip, text="blurry")[0]
    yield SimpleNamespace(model=model, clip=clip, vae=vae, pos=pos, neg=neg)
    del model, clip, vae, pos, neg
    comfy.free()


def sample(comfy, vega, pos, neg, latent) -> torch.Tensor:
    (out,) = comfy.run("KSamplerAdvanced", model=vega.model, add_noise="enable", noise_seed=3, steps=2, cfg=1.0,
                       sampler_name="euler", scheduler="sgm_uniform", positive=pos, negative=neg, latent_image=latent,
                       start_at_step=0, end_at_step=2, return_with_leftover_noise="disable")
    return out["samples"]


def test_load_view_set_outputs(viewset):
    assert viewset.count == 16
    assert viewset.images.shape == (16, 64, 64, 3) and viewset.mask.shape == (16, 64, 64)
    # the pack's glimpse is imported as part of the custom node package: same classes by name, not by identity
    assert type(viewset.depth).__name__ == "DepthMaps" and viewset.depth.depth.shape == (16, 64, 64)
    assert type(viewset.cameras).__name__ == "Cameras" and viewset.cameras.image_size == (64, 64)
    assert viewset.cameras.intrinsics[0, 0, 0].item() == pytest.approx(70.0)
    assert viewset.depth.valid.any(dim=(1, 2)).all()


def test_load_view_set_takes_resolution_from_settings(comfy):
    from glimpse.types import Settings

    settings = Settings(preset="test", steps=4, strength=0.5, controlnet_strength=0.4, resolution=128,
                        views_per_chunk=4, tiled_vae=False, vae_tile_size=512, unet_dtype="default",
                        controlnet_size="small")
    images, *_ = comfy.run("LoadViewSet", path=str(SAMPLE), resolution=64, views_per_chunk=16, settings=settings)
    assert [i.shape for i in images] == [(4, 128, 128, 3)] * 4  # the preset's resolution and views per chunk


def test_load_view_set_outputs_chunks_of_the_selected_views(comfy, viewset):
    images, mask, depth, cameras, count = comfy.run("LoadViewSet", path=str(SAMPLE), views="2-7,12",
                                                    resolution=64, views_per_chunk=3)
    assert count == 7 and [len(i) for i in images] == [3, 3, 1]
    assert [c.view_index.tolist() for c in cameras] == [[2, 3, 4], [5, 6, 7], [12]]
    assert torch.equal(torch.cat(images), viewset.images[[2, 3, 4, 5, 6, 7, 12]])
    assert torch.equal(torch.cat(mask), viewset.mask[[2, 3, 4, 5, 6, 7, 12]])
    assert all((d.near, d.far) == (viewset.depth.near, viewset.depth.far) for d in depth)  # the whole set's range
    assert torch.equal(depth[1].depth, viewset.depth.depth[5:8])


def test_load_view_set_validation_messages(comfy, tmp_path):
    cls = comfy.pack["LoadViewSet"]
    assert cls.validate_inputs(path=str(tmp_path / "missing")).endswith("does not exist")
    (tmp_path / "view_00.png").write_bytes((SAMPLE / "view_00.png").read_bytes())
    assert "cameras.json is missing" in cls.validate_inputs(path=str(tmp_path))
    assert "background colour" in cls.validate_inputs(path=str(SAMPLE), background="nope")
    assert "outside 0-15" in cls.validate_inputs(path=str(SAMPLE), views="0-16")
    assert cls.validate_inputs(path=str(SAMPLE), background="#808080") is True
    assert cls.validate_inputs() is True  # a linked path is checked when the node runs
    f0 = cls.fingerprint_inputs(path=str(SAMPLE))
    assert f0 == cls.fingerprint_inputs(path=str(SAMPLE)) and len(f0) == 64


@pytest.mark.parametrize("kind", list(CONTROLNETS))
def test_depth_controlnet_applies_the_control(comfy, vega, viewset, kind, assert_finite):
    (cnet,) = comfy.run("ControlNetLoader", control_net_name=CONTROLNETS[kind])
    (latent,) = comfy.run("VAEEncode", pixels=viewset.images[:VIEWS], vae=vega.vae)
    depth = viewset.depth.select(slice(VIEWS))
    pos0, neg0, hint0 = comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=cnet,
                                  depth=depth, strength=0.0)
    assert pos0 is vega.pos and neg0 is vega.neg  # strength 0: conditioning untouched
    pos, neg, hint = comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=cnet,
                               depth=depth, strength=0.5, start_percent=0.0, end_percent=1.0,
                               normalisation="shared_inverse", vae=vega.vae)
    assert "control" in pos[0][1] and "control" in neg[0][1]
    assert hint.shape == (VIEWS, 64, 64, 3) and torch.equal(hint, hint0)
    assert (hint[~depth.valid] == 0).all() and float(hint.max()) > 0.9
    base = sample(comfy, vega, vega.pos, vega.neg, latent)
    controlled = sample(comfy, vega, pos, neg, latent)
    assert_finite(controlled)
    assert controlled.shape == base.shape == latent["samples"].shape
    assert (controlled - base).abs().max() > 1e-3


def test_depth_controlnet_applies_union_promax_as_depth(comfy, vega, viewset, assert_finite):
    """ControlNetLoader(union promax) -> SetUnionControlNetType(depth) -> DepthControlNet: the loaded model is the
    union variant, the control DepthControlNet puts in the conditioning keeps the depth type, and it changes the
    sample, differently from the same union model with no type set ('auto')."""
    from comfy.cldm.control_types import UNION_CONTROLNET_TYPES

    (cnet,) = comfy.run("ControlNetLoader", control_net_name=UNION)
    model = cnet.control_model
    assert model.task_embedding is not None and model.control_add_embedding is not None  # a plain ControlNet has None
    assert model.num_control_type == 8 and tuple(model.task_embedding.shape) == (8, 320)  # promax: 8 types
    (typed,) = comfy.run("SetUnionControlNetType", control_net=cnet, type="depth")
    (auto,) = comfy.run("SetUnionControlNetType", control_net=cnet, type="auto")
    depth_type = [UNION_CONTROLNET_TYPES["depth"]]
    assert typed.extra_args["control_type"] == depth_type and auto.extra_args["control_type"] == []
    (latent,) = comfy.run("VAEEncode", pixels=viewset.images[:VIEWS], vae=vega.vae)
    depth = viewset.depth.select(slice(VIEWS))
    pos0, neg0, _ = comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=typed, depth=depth,
                              strength=0.0)
    assert pos0 is vega.pos and neg0 is vega.neg
    args = dict(depth=depth, strength=0.5, start_percent=0.0, end_percent=1.0, normalisation="shared_inverse",
                vae=vega.vae)
    pos, neg, hint = comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=typed, **args)
    assert hint.shape == (VIEWS, 64, 64, 3)
    for cond in (pos, neg):
        control = cond[0][1]["control"]
        assert control.control_model is model and control.extra_args["control_type"] == depth_type
    pos_auto, neg_auto, _ = comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=auto, **args)
    base = sample(comfy, vega, pos0, neg0, latent)
    controlled = sample(comfy, vega, pos, neg, latent)
    untyped = sample(comfy, vega, pos_auto, neg_auto, latent)
    del cnet, model, typed, auto, pos, neg, pos_auto, neg_auto
    comfy.free()  # the union ControlNet alone is 5 GiB in fp32
    assert_finite(controlled)
    assert_finite(untyped)
    assert controlled.shape == base.shape == latent["samples"].shape
    change, type_change = (controlled - base).abs().max().item(), (controlled - untyped).abs().max().item()
    print(f"union promax as depth: max |latent change| {change:.3g} vs strength 0, {type_change:.3g} vs type auto "
          f"(relative {((controlled - base).norm() / base.norm()).item():.3g}, "
          f"{((controlled - untyped).norm() / untyped.norm()).item():.3g})")
    assert change > 1e-3
    assert type_change > 1e-3, "the depth type has no effect: the union path is not used"


def test_hint_of_a_chunk_matches_the_full_set(comfy, viewset):
    (cnet,) = comfy.run("ControlNetLoader", control_net_name=CONTROLNETS["small"])
    cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    *_, full = comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=viewset.depth)
    chunk = viewset.depth.select(slice(8, 12))
    *_, part = comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=chunk)
    assert torch.equal(part, full[8:12])


def test_monocular_estimator_gives_per_view_depth(comfy, viewset):
    cls = comfy.pack["DepthControlNet"]
    module = sys.modules[cls.__module__]
    assert ESTIMATOR in module.estimator_names()
    pred = module.estimate_inverse_depth(ESTIMATOR, viewset.images)
    assert pred.shape == (16, 64, 64) and torch.isfinite(pred).all() and pred.std() > 0
    (cnet,) = comfy.run("ControlNetLoader", control_net_name=CONTROLNETS["small"])
    cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    # no renderer depth at all: every view estimated, background from the mask
    pos, _, hint = comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, images=viewset.images,
                             mask=viewset.mask, depth_estimator=ESTIMATOR, strength=0.5)
    assert hint.shape == (16, 64, 64, 3) and "control" in pos[0][1]
    fg = viewset.mask > 0.5
    assert (hint[~fg] == 0).all() and (hint[fg] > 0).float().mean() > 0.95
    # view 3 without renderer depth: filled by the estimate aligned to the other views' depth
    d = viewset.depth
    z, v = d.depth.clone(), d.valid.clone()
    z[3], v[3] = 0, False
    partial = DepthMaps(depth=z, valid=v, near=d.near, far=d.far)
    *_, hint2 = comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=partial,
                          images=viewset.images, mask=viewset.mask, depth_estimator=ESTIMATOR, strength=0.5)
    assert (hint2[3][fg[3]] > 0).float().mean() > 0.95
    # a chunk whose views all lack renderer depth (it still carries the set's metric near/far): the estimate is in
    # relative units and gets a range of its own instead of being clamped to the metric one
    empty = DepthMaps(depth=torch.zeros(4, 64, 64), valid=torch.zeros(4, 64, 64, dtype=torch.bool), near=d.near,
                      far=d.far)
    *_, hint3 = comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=empty,
                          images=viewset.images[:4], mask=viewset.mask[:4], depth_estimator=ESTIMATOR, strength=0.5)
    fg4 = fg[:4]
    assert (hint3[~fg4] == 0).all() and float(hint3[fg4].max()) == pytest.approx(1.0)
    assert float(hint3[fg4][:, 0].std()) > 0.05
    others = torch.arange(16) != 3
    assert torch.equal(hint2[others], comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet,
                                                depth=d, strength=0.5)[2][others])


def test_missing_depth_without_estimator_is_a_clear_error(comfy, viewset):
    (cnet,) = comfy.run("ControlNetLoader", control_net_name=CONTROLNETS["small"])
    cond = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    z, v = viewset.depth.depth.clone(), viewset.depth.valid.clone()
    z[[2, 9]], v[[2, 9]] = 0, False
    with pytest.raises(ValueError, match=r"view_02, view_09 have no valid renderer depth; connect images"):
        comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=DepthMaps(z, v),
                  strength=0.5)
    with pytest.raises(ValueError, match="needs depth"):
        comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, strength=0.5)
    with pytest.raises(ValueError, match=r"images are 4 views of 64x64 but depth is 16 views"):
        comfy.run("DepthControlNet", positive=cond, negative=cond, control_net=cnet, depth=viewset.depth,
                  images=viewset.images[:4], strength=0.5)


def test_bad_path_is_rejected_by_the_server_before_running(comfy_server, tmp_path):
    prompt = {"1": {"class_type": "LoadViewSet", "inputs": {"path": str(tmp_path / "nope"), "views": "all",
                                                             "background": "#808080", "resolution": 64,
                                                             "views_per_chunk": 4, "strip_views": 0,
                                                             "depth_png_scale": 0.0}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    with pytest.raises(comfy_server.PromptError) as e:
        comfy_server.queue(prompt)
    assert "does not exist" in str(e.value) and "nope" in str(e.value)
    prompt["1"]["inputs"]["path"] = str(SAMPLE)
    entry = comfy_server.queue(prompt)
    assert len(entry["outputs"]["2"]["images"]) == 16  # PreviewImage ran once per chunk of 4


@pytest.mark.parametrize("kind,warned", [("full", True), ("small", False), ("t2i-adapter", False)])
def test_depth_controlnet_reports_a_control_model_of_another_size_than_the_settings(comfy, vega, viewset, kind,
                                                                                   warned, caplog):
    from glimpse.presets import PRESETS

    (cnet,) = comfy.run("ControlNetLoader", control_net_name=CONTROLNETS[kind])
    settings = PRESETS["t4_balanced"]  # plans memory for the small ControlNet
    with caplog.at_level("WARNING"):
        comfy.run("DepthControlNet", positive=vega.pos, negative=vega.neg, control_net=cnet,
                  depth=viewset.depth.select(slice(2)), settings=settings)
    lines = [r.getMessage() for r in caplog.records if "plans memory for a small depth ControlNet" in r.getMessage()]
    assert bool(lines) == warned, lines
    if warned:
        assert "1.25 B (full)" in lines[0] and "+2.0 GiB" in lines[0]
    del cnet
    comfy.free()

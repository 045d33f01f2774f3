"""The model fixtures load through ComfyUI's own loaders with no unmatched or missing key, and sample finitely.

ComfyUI reports most load problems as warnings (caught by the harness for every test) but some only at debug level:
checkpoint keys nothing consumed (`left over keys`), `Leftover VAE keys`, `clip unexpected`, `unexpected controlnet
keys`, `t2i unexpected`. `debug_log` captures those while a loader runs so the tests can require them to be empty.

Everyday tests run on the Vega set; `test_full_size_conformance` runs alone in the full-size process
(`pytest tests/comfy -m fullsize`: `--bf16-unet`, `--size full` fixtures).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

CHECKPOINT = "sd_xl_base_1.0.safetensors"
LORAS = [f"sdxl_lightning_{n}step_lora.safetensors" for n in (2, 4, 8)]
UNETS = [f"sdxl_lightning_{s}.safetensors" for s in ("1step_unet_x0", "2step_unet", "4step_unet", "8step_unet")]
CN_FULL = "controlnet-depth-sdxl-1.0.safetensors"
CN_SMALL = "controlnet-depth-sdxl-1.0-small.safetensors"
T2I = "t2i-adapter-depth-midas-sdxl-1.0.safetensors"
CN_UNION = "controlnet-union-sdxl-1.0_promax.safetensors"
VAE_FP16_FIX = "sdxl_vae_fp16_fix.safetensors"
VAE_OVERFLOW = "sdxl_vae_fp16_overflow.safetensors"
# (a real `clip missing` is a warning, which the harness catches; at debug level ComfyUI lists only CLIP-L's
# logit_scale and text_projection, which SDXL checkpoints never carry)
DEBUG_PROBLEMS = ("left over keys", "Leftover VAE keys", "clip unexpected", "unexpected controlnet keys",
                  "t2i unexpected")
# ComfyUI's own checkpoint saver writes CLIP-L's position_ids buffer (so does sd_xl_base_1.0); its CLIP has none
ALLOWED_UNEXPECTED = "clip_l.transformer.text_model.embeddings.position_ids"


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def debug_log():
    """Collect every log line (debug included) emitted inside the block; yields the list."""
    root = logging.getLogger()
    handler, level = _Capture(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.lines
    finally:
        root.setLevel(level)
        root.removeHandler(handler)


def load_problems(lines) -> list[str]:
    bad = []
    for line in lines:
        if not any(p in line for p in DEBUG_PROBLEMS):
            continue
        if line.startswith("clip unexpected") and line.count("'") == 2 and ALLOWED_UNEXPECTED in line:
            continue
        bad.append(line[:500])
    return bad


def model_type_name(model_patcher) -> str:
    return type(model_patcher.model.model_config).__name__


def depth_hint(size: int = 64) -> torch.Tensor:
    """A near-is-bright depth-like hint image [1, H, W, 3]: a sphere over a far background."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    d = (1 - (x**2 + y**2) / 0.6).clamp(min=0).sqrt()
    return d[None, :, :, None].expand(1, size, size, 3).contiguous()


def sample(comfy, model, positive, negative, seed: int = 0):
    (latent,) = comfy.run("EmptyLatentImage", width=64, height=64, batch_size=1)
    (out,) = comfy.run("KSamplerAdvanced", model=model, add_noise="enable", noise_seed=seed, steps=1, cfg=1.0,
                       sampler_name="euler", scheduler="sgm_uniform", positive=positive, negative=negative,
                       latent_image=latent, start_at_step=0, end_at_step=1, return_with_leftover_noise="disable")
    comfy.assert_finite(out["samples"], "sampled latent")
    return out["samples"]


def apply_control(comfy, control_net, positive, negative, vae, strength=1.0):
    return comfy.run("ControlNetApplyAdvanced", positive=positive, negative=negative, control_net=control_net,
                     image=depth_hint(), strength=strength, start_percent=0.0, end_percent=1.0, vae=vae)


def relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def sdxl(comfy, fixture_size):
    if fixture_size != "vega":
        pytest.skip("the everyday fixture tests run on the Vega set")
    with debug_log() as lines:
        model, clip, vae = comfy.run("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    (positive,) = comfy.run("CLIPTextEncode", clip=clip, text="a photo of a ceramic vase, studio light")
    (negative,) = comfy.run("CLIPTextEncode", clip=clip, text="blurry")
    yield SimpleNamespace(model=model, clip=clip, vae=vae, positive=positive, negative=negative, load_log=lines)
    del model, clip, vae, positive, negative
    comfy.free()


def test_file_names_are_the_official_ones(comfy, fixture_size):
    if fixture_size != "vega":
        pytest.skip("vega set")
    fp = comfy.folder_paths
    assert CHECKPOINT in fp.get_filename_list("checkpoints")
    assert set(LORAS) <= set(fp.get_filename_list("loras"))
    assert set(UNETS) <= set(fp.get_filename_list("diffusion_models"))
    assert {CN_FULL, CN_SMALL, T2I, CN_UNION} <= set(fp.get_filename_list("controlnet"))
    assert {VAE_FP16_FIX, VAE_OVERFLOW} <= set(fp.get_filename_list("vae"))


def test_vega_checkpoint_loads_every_key_as_segmind_vega(comfy, sdxl):
    from comfy import model_base

    assert model_type_name(sdxl.model) == "Segmind_Vega"
    assert isinstance(sdxl.model.model, model_base.SDXL)
    assert load_problems(sdxl.load_log) == []
    # ComfyUI logs `left over keys` only when some remain; its debug-level CLIP line proves the capture saw debug
    assert any(line.startswith("clip unexpected") for line in sdxl.load_log)
    cond = sdxl.positive[0]
    assert cond[0].shape == (1, 77, 2048) and cond[1]["pooled_output"].shape == (1, 1280)


def test_vega_checkpoint_samples_finite(comfy, sdxl):
    a = sample(comfy, sdxl.model, sdxl.positive, sdxl.negative)
    b = sample(comfy, sdxl.model, sdxl.negative, sdxl.negative)
    assert a.shape == (1, 4, 8, 8)
    assert relative_change(a, b) > 1e-4, "the prompt has no effect on the sample"


def test_lightning_lora_patches_every_key(comfy, sdxl):
    path = comfy.folder_paths.get_full_path_or_raise("loras", LORAS[1])
    with safe_open(path, "pt") as f:
        modules = {k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    with debug_log() as lines:
        model, clip = comfy.run("LoraLoader", model=sdxl.model, clip=sdxl.clip, lora_name=LORAS[1],
                                strength_model=1.0, strength_clip=1.0)
    assert not [line for line in lines if "lora key not loaded" in line or "NOT LOADED" in line]
    assert len(model.patches) == len(modules) > 200
    base = sample(comfy, sdxl.model, sdxl.positive, sdxl.negative)
    patched = sample(comfy, model, sdxl.positive, sdxl.negative)
    change = relative_change(patched, base)
    del model, clip
    comfy.free()  # the patched copy's weight backups
    print(f"Lightning LoRA: relative change of the 1-step latent {change:.3g}")
    assert change > 1e-3, "the LoRA has no visible effect"


@pytest.mark.parametrize("name", [UNETS[0], UNETS[2]])
def test_lightning_unet_loads_as_sdxl_family(comfy, sdxl, name):
    from comfy import model_base

    with debug_log() as lines:
        (model,) = comfy.run("UNETLoader", unet_name=name, weight_dtype="default")
    assert model_type_name(model) == "Segmind_Vega"
    assert isinstance(model.model, model_base.SDXL)
    assert load_problems(lines) == []
    sample(comfy, model, sdxl.positive, sdxl.negative)
    del model
    comfy.free()


@pytest.mark.parametrize("name,kind", [(CN_FULL, "ControlNet"), (CN_SMALL, "ControlNet"), (T2I, "T2IAdapter"),
                                       (CN_UNION, "ControlNet")])
def test_control_models_load_every_key_and_change_the_sample(comfy, sdxl, name, kind):
    with debug_log() as lines:
        (cnet,) = comfy.run("ControlNetLoader", control_net_name=name)
    assert type(cnet).__name__ == kind
    assert load_problems(lines) == []
    positive, negative = apply_control(comfy, cnet, sdxl.positive, sdxl.negative, sdxl.vae)
    controlled = sample(comfy, sdxl.model, positive, negative)
    plain = sample(comfy, sdxl.model, sdxl.positive, sdxl.negative)
    change = relative_change(controlled, plain)
    del cnet, positive, negative
    comfy.free()  # the full ControlNet alone is 5 GiB in fp32
    print(f"{name}: relative change of the 1-step latent {change:.3g}")
    assert change > 1e-3, f"{name} has no visible effect on the sample"


@pytest.mark.parametrize("name", [VAE_FP16_FIX, VAE_OVERFLOW])
def test_standalone_vae_loads_every_key_in_its_file_dtype(comfy, fixture_size, name):
    if fixture_size != "vega":
        pytest.skip("vega set")
    path = comfy.folder_paths.get_full_path_or_raise("vae", name)
    with safe_open(path, "pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"F32"} and "decoder.mid.attn_1.q.weight" in keys and "post_quant_conv.weight" in keys
    with debug_log() as lines:
        (vae,) = comfy.run("VAELoader", vae_name=name)
    assert load_problems(lines) == []
    assert set(vae.get_sd()) == set(keys), "ComfyUI's VAE has exactly the file's keys"
    (latent,) = comfy.run("VAEEncode", pixels=torch.rand(1, 64, 64, 3), vae=vae)
    assert latent["samples"].shape == (1, 4, 8, 8)


def test_small_controlnet_is_detected_as_small_layout(comfy, fixture_size):
    from comfy import model_detection, utils

    if fixture_size != "vega":
        pytest.skip("vega set")
    sd = utils.load_torch_file(comfy.folder_paths.get_full_path_or_raise("controlnet", CN_SMALL))
    config = model_detection.unet_config_from_diffusers_unet(sd)
    # the SDXL_small_cnet entry of ComfyUI's diffusers table: no transformer anywhere, a zero-depth middle shell
    assert config["transformer_depth"] == [0] * 6 and config["transformer_depth_middle"] == 0
    assert config["model_channels"] == 320 and config["adm_in_channels"] == 2816


def test_depth_estimator_loads_offline(models_dir, monkeypatch):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(models_dir) / "depth_estimators" / "depth-anything-small"
    model = AutoModelForDepthEstimation.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "depth_anything"
    image = (depth_hint(128)[0] * 255).to(torch.uint8).numpy()
    with torch.no_grad():
        depth = model(**processor(images=image, return_tensors="pt")).predicted_depth
    assert depth.shape[0] == 1 and torch.isfinite(depth).all()
    assert depth.std() > 0.01, "the random depth estimator outputs a constant map"


@pytest.mark.fullsize
def test_full_size_conformance(comfy, fixture_size, models_dir):
    """Full SDXL base checkpoint + Lightning LoRA + full depth ControlNet: every key loads, 1 step samples finitely."""
    from comfy import model_base, model_management

    assert fixture_size == "full"
    assert model_management.args.bf16_unet, "the full-size process must run with --bf16-unet"
    with debug_log() as lines:
        model, clip, vae = comfy.run("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    assert model_type_name(model) == "SDXL" and isinstance(model.model, model_base.SDXL)
    assert model.model.get_dtype() == torch.bfloat16
    assert load_problems(lines) == []
    assert any(line.startswith("clip unexpected") for line in lines)

    path = comfy.folder_paths.get_full_path_or_raise("loras", LORAS[1])
    with safe_open(path, "pt") as f:
        modules = {k.rsplit(".", 2)[0] for k in f.keys() if k.endswith(".lora_down.weight")}
    with debug_log() as lines:
        model, clip = comfy.run("LoraLoader", model=model, clip=clip, lora_name=LORAS[1], strength_model=1.0,
                                strength_clip=1.0)
        (cnet,) = comfy.run("ControlNetLoader", control_net_name=CN_FULL)
    assert len(model.patches) == len(modules) > 700
    assert type(cnet).__name__ == "ControlNet"
    assert load_problems(lines) == []

    (positive,) = comfy.run("CLIPTextEncode", clip=clip, text="a photo of a ceramic vase, studio light")
    (negative,) = comfy.run("CLIPTextEncode", clip=clip, text="blurry")
    positive, negative = apply_control(comfy, cnet, positive, negative, vae)
    latent = sample(comfy, model, positive, negative)
    assert latent.shape == (1, 4, 8, 8)
    del model, clip, vae, cnet, positive, negative
    comfy.free()


@pytest.mark.fullsize
def test_full_lightning_unet_has_the_diffusers_sdxl_layout(comfy, models_dir):
    """The full Lightning UNet (keys from ComfyUI's conversion map) has exactly the key names and shapes of diffusers'
    SDXL UNet2DConditionModel, i.e. of ByteDance's sdxl_lightning_*_unet.safetensors."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        reference = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    path = comfy.folder_paths.get_full_path_or_raise("diffusion_models", UNETS[2])
    with safe_open(path, "pt") as f:
        actual = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert actual == expected
    assert dtypes == {"F16"}

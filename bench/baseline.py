"""Baseline: the seed's way, HF diffusers ``StableDiffusionXLControlNetImg2ImgPipeline``, one view per call.

    python -m bench.baseline --device cpu|cuda --models-dir DIR --set DIR --views N --resolution R --config t4 \
        --out F.json

Same views (loaded and composited by glimpse.viewset, hint by glimpse.depth.depth_hint, as LoadViewSet and
DepthControlNet make them), same models and settings as the bundled workflow of ``--config``:

- UNet: the fixture's Lightning full UNet (``diffusion_models/sdxl_lightning_4step_unet.safetensors``, diffusers
  layout) in bench/configs/sdxl_unet.json's layout (the Vega-size fixture: 1/1/2 transformer layers and a
  resnet-only middle block, as Segmind-Vega); the LoRA workflows merge their LoRA into the UNet weights, so the UNet
  costs the same.
- ControlNet: the fixture file of the workflow's ControlNetLoader (diffusers format, tests/fixtures/controlnet.py's
  config for its layout).
- VAE: bench/configs/sdxl_vae.json, random-initialised (speed does not depend on weight values), loaded in the
  UNet's dtype; diffusers upcasts it to fp32 for encode and decode (force_upcast), as with the stock SDXL VAE.
- Scheduler: EulerDiscreteScheduler with timestep_spacing "trailing" (bench/configs/euler_trailing.json), no CFG
  (guidance_scale 1), ``num_inference_steps`` = the Lightning step count N and ``strength`` = k/N so that it runs the
  same k steps as the workflow (counted: the UNet's calls per view are reported).
- Prompt: fixed random prompt embeddings (one encode per set is negligible and the same for both sides).

Times every call (device-synchronised): VAE encode, UNet, ControlNet, VAE decode per view; one warm-up view first.
Then one more view runs under bench.work.WorkCounter: the work it executes, by the same phases. Every model stays on
the device for the whole run, so no weights move between views.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from .common import (
    CONFIG_DIR,
    Clock,
    executed_steps,
    gpu_name,
    load_workflow,
    median,
    nodes_of,
    peak_rss_bytes,
    settings_of,
    write_json,
)
from .work import Work, WorkCounter

LIGHTNING_UNET = "diffusion_models/sdxl_lightning_4step_unet.safetensors"


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIG_DIR / name).read_text(encoding="utf-8")).items()
            if not k.startswith("_")}


def _load_state(model, path: Path, dtype, device) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{path.name}: {len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected "
                           f"keys {unexpected[:3]} for {type(model).__name__}")
    model.to(device=device, dtype=dtype)


def meta_unet(size: str):
    """The diffusers SDXL UNet of ``size`` ("full", or "vega": Segmind-Vega's fewer transformer layers and a middle
    block of one resnet) on the meta device."""
    from diffusers import UNet2DConditionModel

    config = _config("sdxl_unet.json")
    if size == "vega":
        config["transformer_layers_per_block"] = [1, 1, 2]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        if size == "vega":
            unet.mid_block = _ResnetMid(unet.mid_block.resnets[0])
    return unet


def meta_controlnet(layout: str):
    """The diffusers SDXL ControlNet of ``layout`` (tests/fixtures/controlnet.py's configs) on the meta device."""
    from diffusers import ControlNetModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.fixtures.controlnet import CONTROLNET_CONFIGS

    with torch.device("meta"):
        return ControlNetModel(**CONTROLNET_CONFIGS[layout])


def meta_vae():
    """The diffusers SDXL VAE (bench/configs/sdxl_vae.json) on the meta device."""
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(**_config("sdxl_vae.json"))


def build_unet(path: Path, dtype, device):
    """The diffusers UNet of a Lightning full-UNet fixture file (full SDXL, or the Vega size of the everyday tests)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        size = "full" if "mid_block.attentions.0.proj_in.weight" in f.keys() else "vega"
    unet = meta_unet(size)
    _load_state(unet, path, dtype, device)
    return unet, size


class _ResnetMid(torch.nn.Module):
    """A middle block of a single resnet (Segmind-Vega), keys ``mid_block.resnets.0.*``."""

    def __init__(self, resnet):
        super().__init__()
        self.resnets = torch.nn.ModuleList([resnet])

    def forward(self, hidden_states, temb=None, **kwargs):
        return self.resnets[0](hidden_states, temb)


def build_controlnet(path: Path, layout: str, dtype, device):
    cn = meta_controlnet(layout)
    _load_state(cn, path, dtype, device)
    return cn


def build_vae(dtype, device):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKL(**_config("sdxl_vae.json"))
    return vae.to(dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.baseline")
    ap.add_argument("--device", choices=("cpu", "cuda"), required=True)
    ap.add_argument("--models-dir", type=Path, required=True)
    ap.add_argument("--set", type=Path, required=True)
    ap.add_argument("--views", type=int, required=True)
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from diffusers import EulerDiscreteScheduler, StableDiffusionXLControlNetImg2ImgPipeline

    from glimpse.depth import depth_hint
    from glimpse.scan import scan_view_set
    from glimpse.viewset import load_view_set

    workflow, source = load_workflow(args.config)
    settings = settings_of(workflow, args.config)
    k = executed_steps(settings)
    cn_nodes = nodes_of(workflow, "ControlNetLoader")
    cn_file = workflow[cn_nodes[0]]["inputs"]["control_net_name"] if cn_nodes else \
        "controlnet-depth-sdxl-1.0-small.safetensors"
    cn_layout = "small" if "small" in cn_file else "full"
    device = args.device
    dtype = torch.float16 if device == "cuda" else torch.float32
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    vs = load_view_set(scan_view_set(args.set), resolution=args.resolution)
    hint = depth_hint(vs.depth)
    images = vs.images[: args.views].permute(0, 3, 1, 2).contiguous()  # [N,3,H,W] 0..1
    hints = hint[: args.views].permute(0, 3, 1, 2).contiguous()
    h, w = images.shape[-2:]

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    unet, unet_size = build_unet(args.models_dir / LIGHTNING_UNET, dtype, device)
    controlnet = build_controlnet(args.models_dir / "controlnet" / cn_file, cn_layout, dtype, device)
    vae = build_vae(dtype, device)
    scheduler = EulerDiscreteScheduler.from_config(_config("euler_trailing.json"))
    pipe = StableDiffusionXLControlNetImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
        controlnet=controlnet, scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0

    gen = torch.Generator("cpu").manual_seed(0)
    prompt_embeds = (torch.randn(1, 77, 2048, generator=gen) * 0.5).to(device, dtype)
    pooled = (torch.randn(1, 1280, generator=gen) * 0.5).to(device, dtype)

    clock = Clock(device)
    counter = WorkCounter()
    vae.encode = counter.wrap("vae_encode", clock.wrap("vae_encode", vae.encode))
    vae.decode = counter.wrap("vae_decode", clock.wrap("vae_decode", vae.decode))
    unet.forward = counter.wrap("unet", clock.wrap("unet", unet.forward))
    controlnet.forward = counter.wrap("controlnet", clock.wrap("controlnet", controlnet.forward))

    def one(i: int):
        return pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled, image=images[i:i + 1],
                    control_image=hints[i:i + 1], height=h, width=w, strength=k / settings.steps,
                    num_inference_steps=settings.steps, guidance_scale=1.0,
                    controlnet_conditioning_scale=settings.controlnet_strength,
                    generator=torch.Generator("cpu").manual_seed(42), output_type="pil").images[0]

    with torch.inference_mode():
        t = time.perf_counter()
        one(0)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        warmup_s = time.perf_counter() - t
        clock.reset()
        per_view = []
        t_all = time.perf_counter()
        for i in range(args.views):
            t = time.perf_counter()
            one(i)
            if device == "cuda":
                torch.cuda.synchronize()
            per_view.append(time.perf_counter() - t)
        wall = time.perf_counter() - t_all
        unet_calls = clock.calls.get("unet", 0) / args.views
        parts = {"vae_encode": clock.seconds.get("vae_encode", 0.0), "unet": clock.seconds.get("unet", 0.0),
                 "controlnet": clock.seconds.get("controlnet", 0.0), "vae_decode": clock.seconds.get("vae_decode", 0.0)}
        clock.reset()
        with counter:
            one(0)
        counted_calls = dict(clock.calls)
    if unet_calls != k:
        raise RuntimeError(f"the baseline ran {unet_calls} UNet steps per view, expected {k}")
    parts["other"] = max(0.0, wall - sum(parts.values()))
    by_phase = {p: counter.by_phase.get(p, Work()) for p in ("vae_encode", "unet", "controlnet", "vae_decode", "other")}
    out = {
        "pipeline": "diffusers StableDiffusionXLControlNetImg2ImgPipeline",
        "workflow_settings_from": source,
        "unet": f"{LIGHTNING_UNET} ({unet_size} size, {str(dtype).removeprefix('torch.')})",
        "controlnet": f"controlnet/{cn_file} ({cn_layout})",
        "vae": "random-initialised SDXL VAE config, force_upcast (fp32 encode/decode)",
        "scheduler": "EulerDiscreteScheduler timestep_spacing=trailing, guidance_scale 1 (no CFG)",
        "num_inference_steps": settings.steps,
        "strength": k / settings.steps,
        "executed_steps": k,
        "unet_calls_per_view": unet_calls,
        "views": args.views,
        "resolution": args.resolution,
        "load_s": load_s,
        "warmup_s": warmup_s,
        "s_per_view": median(per_view),
        "per_view_s": per_view,
        "wall_s": wall,
        "wall_16_s": wall if args.views == 16 else None,
        "split_s": parts,
        "split_per_view_s": {key: v / args.views for key, v in parts.items()},
        "work_counted": "one more view under bench.work.WorkCounter",
        "tflop_per_view": counter.total().flop / 1e12,
        "tflop_by_phase": {p: w.flop / 1e12 for p, w in by_phase.items()},
        "work_by_phase_per_view": {p: w.as_dict() for p, w in by_phase.items()},
        "unet_tflop_per_call": by_phase["unet"].flop / counted_calls["unet"] / 1e12,
        "controlnet_tflop_per_call": by_phase["controlnet"].flop / counted_calls["controlnet"] / 1e12,
        "weights_moved_gib_per_view": 0.0,
        "peak_rss_gib": peak_rss_bytes() / 2 ** 30,
        "gpu": gpu_name(device),
    }
    if device == "cuda":
        out["peak_gpu_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2 ** 30
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Executed work per view of each bundled workflow and of the baseline at any size, and a GPU cost model from it.

    python -m bench.cost [--resolution 1024] [--configs t4,speed,quality] [--per-set F.json] [--out F.json]

**Work.** Each model call a view needs is counted op by op (bench/work.py) on the ``meta`` device, where nothing is
computed, with the diffusers modules of the baseline (bench/baseline.py: the SDXL UNet, full or Vega; the depth
ControlNet, small or full; the SDXL VAE) at the shapes the view is run at. That makes the count exact at any size
without a GPU: an executed UNet step of ComfyUI counts the same FLOPs as diffusers' (tests/comfy/test_work_count.py,
and the benchmark's ``model_check`` compares these counts with the ones counted on its own runs). Attention is counted
as one fused kernel (what SDPA runs on CUDA), not the meta device's unfused math. Calls per view:

- ours: the workflow's executed steps of the UNet and of the ControlNet (strength > 0: every step), the VAE encode
  and decode as glimpse.vae plans them from the workflow's settings (untiled, or every tile of its ONE tiled pass);
- baseline: the same steps, one untiled VAE encode and decode.

**Time.** Per call, a roofline per op with the card's published peaks, then an efficiency factor:
``t_call = max(ops x HOST_S_PER_OP, sum_op max(flop / (peak x eff), bytes / (bandwidth x EFF_MEMORY)))``: the host
issues one kernel per op (ComfyUI and diffusers run eagerly), the card runs each kernel at its compute or memory
bound, whichever is slower. Peaks: fp16 tensor cores for fp16/bf16; fp32 on TF32 tensor cores where the card has
them (cuDNN convolutions default to TF32), else the plain fp32 rate (a T4). Weights that do not fit next to the
plan's peak are streamed over PCIe every step (ComfyUI's partial load). Our nodes run on the host: their measured
per-set time (bench/per_set.py) per view is added. Text encoding (once per set) and sampler bookkeeping are left
out on both sides.

**Efficiency factors** (fractions of the roofline floor), calibrated on the baseline's H200 measurement of issue 8
(1024 px, fp16 UNet, full depth ControlNet, fp32 VAE; ``calibration`` in the output holds the model's figures beside
the measured ones): host 23 us per op (one view per call is host-bound on an H200: 53.5 ms per UNet step of 2285
ops, 27 ms per full ControlNet pass of 1147); the VAE on tensor cores 0.135 (its fp16 encode + decode, 128 ms; the
same factor on TF32 gives the fp32 encode's 80 ms, and 169 ms for the decode measured at 114); UNet and ControlNet
on tensor cores 0.55 (4 views per call, 0.27 s/view with the fp16 VAE: 0.44 to 0.70 depending on how much of the
62 ms pipeline overhead a batch shares). fp32 without tensor cores (a T4) is not measured: 0.7 is assumed (large
convolutions reach most of a card's fp32 FMA rate). A run on a real card calibrates them: the benchmark on CUDA
puts its measured s/view over this model's beside them (``measured_over_model``).

**Memory.** The memory plan of glimpse/presets.py (``estimate_memory``: resident weights + the largest transient
phase + ComfyUI's reserve) with the VAE dtype the card runs: that is ``peak_gib``.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from glimpse.lightning import plan_img2img
from glimpse.presets import GIB, PRESETS, estimate_memory
from glimpse.vae import plan_for, plan_vae

from .common import CONFIGS, load_workflow, nodes_of, settings_of, write_json
from .crossview_cost import record_bytes_per_view_step, sample_coverage, step_work
from .work import Work, WorkCounter

EFF_TC_MODEL = 0.55
EFF_TC_VAE = 0.135
EFF_SIMT = 0.7
EFF_MEMORY = 0.8
HOST_S_PER_OP = 23e-6
CONFIG_VIEWS = 16  # views of a set (SyncDreamer's): the anchor pass's record is written once per set
T4_BUDGET_GIB = 10.0  # issue 12's target for the t4 workflow (15 GiB cards: everything resident, room to spare)


@dataclass(frozen=True)
class Card:
    """Published dense peaks (TFLOPS), memory bandwidth and host link (GB/s), memory ComfyUI can use (GiB)."""

    name: str
    fp16: float
    tf32: float | None
    fp32: float
    bf16: bool
    bandwidth: float
    pcie: float
    memory_gib: float


CARDS = {
    "t4": Card("NVIDIA T4 16 GB (Turing, 70 W)", 65.0, None, 8.1, False, 320.0, 15.75, 15.0),
    "h100": Card("NVIDIA H100 SXM 80 GB", 989.4, 494.7, 66.9, True, 3350.0, 63.0, 79.0),
    "h200": Card("NVIDIA H200 141 GB", 989.4, 494.7, 66.9, True, 4800.0, 63.0, 139.0),
}
# issue 8's H200 measurement of the baseline (1024 px, 4 steps, full depth ControlNet): seconds
H200_MEASURED = {"unet_step": 0.0535, "controlnet_pass": 0.027, "vae_encode_fp32": 0.080, "vae_decode_fp32": 0.114,
                 "vae_fp16_encode_plus_decode": 0.128, "s_per_view": 0.553, "s_per_view_batch4": 0.32}


@dataclass(frozen=True)
class Call:
    """One model call of a view: its counted work, its ops' (flop, bytes) for the roofline, its compute dtype."""

    kind: str  # unet | controlnet | vae
    work: Work
    ops: tuple[tuple[int, int], ...]
    dtype: str  # fp16 | bf16 | fp32


@contextmanager
def _fused_attention():
    """SDPA as the one fused kernel CUDA runs (the meta device would count its unfused math decomposition)."""
    original = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, attn_mask, False, dropout_p,
                                                                       is_causal, scale=scale)[0]
    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


@lru_cache(maxsize=None)
def _module(kind: str, variant: str, dtype: torch.dtype):
    from .baseline import meta_controlnet, meta_unet, meta_vae

    make = {"unet": meta_unet, "controlnet": meta_controlnet, "vae": lambda _: meta_vae()}[kind]
    return make(variant).to(dtype).eval()


@lru_cache(maxsize=None)
def count_call(kind: str, variant: str, shape: tuple[int, ...], dtype: str = "fp16",
               decode: bool = False) -> Call:
    """Work of one call of a model (``kind`` unet/controlnet: ``variant`` full/vega/small, ``shape`` the latent
    [B,4,h,w]; ``vae``: ``shape`` [B,3,H,W] pixels to encode or, with ``decode``, [B,4,h,w] latents)."""
    dt = {"fp16": torch.float16, "bf16": torch.float16, "fp32": torch.float32}[dtype]
    m = _module(kind, variant, dt)
    meta = dict(device="meta", dtype=dt)
    x = torch.empty(shape, **meta)
    b = shape[0]
    if kind == "vae":
        run = (lambda: m.decode(x)) if decode else (lambda: m.encode(x))
    else:
        ctx = torch.empty(b, 77, 2048, **meta)
        added = {"text_embeds": torch.empty(b, 1280, **meta), "time_ids": torch.empty(b, 6, **meta)}
        t = torch.full((b,), 500.0, device="meta")
        if kind == "unet":
            def run():
                return m(x, t, ctx, added_cond_kwargs=added)
        else:
            hint = torch.empty(b, 3, shape[2] * 8, shape[3] * 8, **meta)

            def run():
                return m(x, t, ctx, hint, added_cond_kwargs=added)
    with WorkCounter(record=True) as counter, _fused_attention(), torch.no_grad():
        run()
    return Call(kind, counter.total(), tuple(counter.ops["other"]), dtype)


def vae_calls(plan, decode: bool, dtype: str) -> list[Call]:
    """The VAE calls of one image under ``plan`` (glimpse.vae.VaePlan): one, or one per tile."""
    p = plan.latent() if decode else plan
    channels = 4 if decode else 3
    return [count_call("vae", "sdxl", (1, channels, h, w), dtype, decode) for h, w in p.tile_shapes()]


def controlnet_layout(workflow: dict) -> str:
    ids = nodes_of(workflow, "ControlNetLoader")
    name = workflow[ids[0]]["inputs"]["control_net_name"] if ids else "small"
    return "small" if "small" in name else "full"


def view_calls(config: str, resolution: int, size: str, side: str, chunk: int = 1,
               vae_dtype: str = "fp32") -> dict[str, list[tuple[Call, float]]]:
    """Per phase, (call, calls per view) of one view of ``config`` at ``resolution`` px: ``side`` ours or baseline,
    ``size`` the UNet (full / vega), ``chunk`` views per sampler call."""
    workflow, _ = load_workflow(config)
    s = replace(settings_of(workflow, config), resolution=resolution)
    k = plan_img2img(s.steps, s.strength).executed
    lat = (chunk, 4, resolution // 8, resolution // 8)
    phases = {"unet": [(count_call("unet", size, lat), k / chunk)], "vae_encode": [], "vae_decode": []}
    if s.controlnet_strength > 0:
        phases["controlnet"] = [(count_call("controlnet", controlnet_layout(workflow), lat), k / chunk)]
    plan = plan_for(s, resolution, resolution) if side == "ours" else plan_vae(False, 0, resolution, resolution)
    phases["vae_encode"] = [(c, 1.0) for c in vae_calls(plan, False, vae_dtype)]
    phases["vae_decode"] = [(c, 1.0) for c in vae_calls(plan, True, vae_dtype)]
    if side == "ours" and s.cross_view != "off":
        phases["cross_view"] = [(cross_view_call(s.cross_view, s.anchor_neighbours, resolution,
                                                 cross_view_window(workflow)), k)]
    return phases


def cross_view_window(workflow: dict) -> int:
    ids = nodes_of(workflow, "GlimpseCrossViewAttention")
    return int(workflow[ids[0]]["inputs"].get("window", 0)) if ids else 0


@lru_cache(maxsize=None)
def cross_view_call(mode: str, neighbours: int, resolution: int, window: int) -> Call:
    """What cross-view attention adds to one view's UNet step, as one fp16 call (bench/crossview_cost.py)."""
    work, ops = step_work(mode, neighbours, resolution, window)
    return Call("unet", work, ops, "fp16")


def phase_work(phases: dict) -> dict[str, Work]:
    out = {}
    for name, calls in phases.items():
        w = Work()
        for call, n in calls:
            w += call.work.scaled(n)
        out[name] = w
    return out


def _rate(card: Card, call: Call) -> tuple[float, float]:
    """(peak FLOP/s, efficiency) of a call's math on ``card``."""
    if call.dtype in ("fp16", "bf16"):
        return card.fp16 * 1e12, EFF_TC_VAE if call.kind == "vae" else EFF_TC_MODEL
    if card.tf32:
        return card.tf32 * 1e12, EFF_TC_VAE if call.kind == "vae" else EFF_TC_MODEL
    return card.fp32 * 1e12, EFF_SIMT


def call_seconds(card: Card, call: Call) -> float:
    peak, eff = _rate(card, call)
    bw = card.bandwidth * 1e9 * EFF_MEMORY
    device = sum(max(f / (peak * eff), b / bw) for f, b in call.ops)
    return max(len(call.ops) * HOST_S_PER_OP, device)


def card_dtypes(card: Card, config: str, side: str) -> tuple[str, str]:
    """(UNet/ControlNet dtype, VAE dtype) that runs on ``card``: ComfyUI's fp16 UNet; the VAE in bf16 where the card
    has it, else fp16 for the t4 workflow's fp16-safe VAE (GlimpseVAE fp16 auto) and fp32 otherwise; the baseline's
    VAE always fp32 (diffusers' force_upcast)."""
    if side == "baseline":
        return "fp16", "fp32"
    if card.bf16:
        return "fp16", "bf16"
    return "fp16", "fp16" if _half_vae(config) else "fp32"


def _half_vae(config: str) -> bool:
    workflow, _ = load_workflow(config)
    return any(workflow[n]["inputs"].get("fp16", "auto") != "never" for n in nodes_of(workflow, "GlimpseVAEDecode"))


def memory_plan(config: str, resolution: int, vae_bytes: int, chunk: int | None = None):
    workflow, _ = load_workflow(config)
    s = replace(settings_of(workflow, config), resolution=resolution)
    if chunk:
        s = replace(s, views_per_chunk=chunk)
    return estimate_memory(s, vae_dtype_bytes=vae_bytes,
                           with_controlnet=s.controlnet_strength > 0)


def predict(card_key: str, config: str, resolution: int, side: str = "ours", chunk: int = 1,
            host_s_per_view: float = 0.0, record_coverage: float | None = None) -> dict:
    """The cost model's s/view, phase split, dominant phase, planned peak and weights moved for one card.

    ``record_coverage``: the share of their tokens the anchors' correspondence record keeps (tokens with depth);
    None: the benchmark's set's (samples/fox), 1.0: an object that fills the frame."""
    card = CARDS[card_key]
    model_dtype, vae_dtype = card_dtypes(card, config, side)
    phases = view_calls(config, resolution, "full", side, chunk, vae_dtype)
    seconds = {name: sum(call_seconds(card, c) * n for c, n in calls) for name, calls in phases.items()}
    out = {"card": card.name, "vae_dtype": vae_dtype, "views_per_chunk": chunk}
    moved = 0.0
    if side == "ours":
        plan = memory_plan(config, resolution, 2 if vae_dtype != "fp32" else 4, chunk)
        over = max(0.0, plan.peak - card.memory_gib * GIB)
        moved = over * sum(n for _, n in phases["unet"])  # what does not fit streams in every step (partial load)
        seconds["weights_streamed"] = moved / (card.pcie * 1e9 * EFF_MEMORY)
        if "cross_view" in phases and not plan.record_on_gpu:  # the anchors' record crosses the host link
            workflow = load_workflow(config)[0]
            s = settings_of(workflow, config)
            coverage = sample_coverage(resolution, s.anchor_count) if record_coverage is None else record_coverage
            record = record_bytes_per_view_step(s.cross_view, cross_view_window(workflow), s.anchor_neighbours,
                                                s.anchor_count, CONFIG_VIEWS, resolution, coverage)
            seconds["cross_view_record"] = record * sum(n for _, n in phases["cross_view"]) / (
                card.pcie * 1e9 * EFF_MEMORY)
            out["record_coverage"] = coverage
        seconds["ours"] = host_s_per_view
        out.update(peak_gib=plan.peak / GIB, peak_phase=plan.peak_phase, fits=plan.peak <= card.memory_gib * GIB)
    out["weights_moved_gib_per_view"] = moved / GIB
    out["s_per_view"] = sum(seconds.values())
    out["split_s"] = seconds
    out["dominant_phase"] = max(seconds, key=seconds.get)
    return out


def tflop_by_phase(config: str, resolution: int, size: str, side: str) -> dict[str, float]:
    return {k: w.flop / 1e12 for k, w in phase_work(view_calls(config, resolution, size, side)).items()}


def calibration() -> dict:
    """This model's figures for issue 8's H200 measurement of the baseline, beside the measured ones."""
    card, r = CARDS["h200"], 1024
    unet = call_seconds(card, count_call("unet", "full", (1, 4, 128, 128)))
    cn = call_seconds(card, count_call("controlnet", "full", (1, 4, 128, 128)))
    enc = call_seconds(card, count_call("vae", "sdxl", (1, 3, r, r), "fp32"))
    dec = call_seconds(card, count_call("vae", "sdxl", (1, 4, r // 8, r // 8), "fp32", True))
    half = (call_seconds(card, count_call("vae", "sdxl", (1, 3, r, r), "fp16"))
            + call_seconds(card, count_call("vae", "sdxl", (1, 4, r // 8, r // 8), "fp16", True)))
    b4 = (call_seconds(card, count_call("unet", "full", (4, 4, 128, 128)))
          + call_seconds(card, count_call("controlnet", "full", (4, 4, 128, 128)))) / 4
    model = {"unet_step": unet, "controlnet_pass": cn, "vae_encode_fp32": enc, "vae_decode_fp32": dec,
             "vae_fp16_encode_plus_decode": half, "s_per_view": 4 * (unet + cn) + enc + dec,
             "s_per_view_batch4": 4 * b4 + enc + dec}
    return {"measured_s": H200_MEASURED, "model_s": model,
            "note": "baseline, 1024 px, 4 steps, full depth ControlNet; the measured s/view also holds 62 ms of "
                    "pipeline overhead the model leaves out"}


def run(resolution: int = 1024, configs=tuple(CONFIGS), host_s_per_view: float = 0.0) -> dict:
    """Work per view by phase (full-size models) and the cost model's figures for every card, per config."""
    out = {"resolution": resolution, "efficiency": {"tensor_cores_unet_controlnet": EFF_TC_MODEL,
                                                    "tensor_cores_vae": EFF_TC_VAE, "fp32_no_tensor_cores": EFF_SIMT,
                                                    "memory_bandwidth": EFF_MEMORY, "host_s_per_op": HOST_S_PER_OP},
           "cards": {k: vars(c) for k, c in CARDS.items()}, "calibration": calibration(), "configs": {}}
    for config in configs:
        entry = {}
        for side in ("ours", "baseline"):
            work = phase_work(view_calls(config, resolution, "full", side))
            entry[side] = {"tflop_per_view": sum(w.flop for w in work.values()) / 1e12,
                           "tflop_by_phase": {k: w.flop / 1e12 for k, w in work.items()},
                           "work_by_phase": {k: w.as_dict() for k, w in work.items()}}
        entry["flop_ratio"] = entry["ours"]["tflop_per_view"] / entry["baseline"]["tflop_per_view"]
        entry["flop_ratio_without_cross_view"] = ((entry["ours"]["tflop_per_view"]
                                                   - entry["ours"]["tflop_by_phase"].get("cross_view", 0.0))
                                                  / entry["baseline"]["tflop_per_view"])
        for key in CARDS:
            chunks = {}
            for chunk in (1, 2, 4):
                chunks[str(chunk)] = predict(key, config, resolution, "ours", chunk, host_s_per_view)
            default = PRESETS[CONFIGS[config]].views_per_chunk
            model = dict(chunks[str(default)] if str(default) in chunks else chunks["1"])
            model["by_chunk"] = {c: {"s_per_view": v["s_per_view"], "peak_gib": v["peak_gib"]}
                                 for c, v in chunks.items()}
            model["baseline_s_per_view"] = predict(key, config, resolution, "baseline")["s_per_view"]
            if "record_coverage" in model:  # the fox's record is small: also an object that fills the frame
                model["s_per_view_full_frame_object"] = predict(key, config, resolution, "ours", default,
                                                                host_s_per_view, record_coverage=1.0)["s_per_view"]
            entry[f"{key}_model"] = model
        out["configs"][config] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=1024)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--host-s-per-view", type=float, default=0.0, help="our nodes' host time per view")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    result = run(args.resolution, [c for c in args.configs.split(",") if c], args.host_s_per_view)
    text = json.dumps(result, indent=2)
    if args.out:
        write_json(args.out, result)
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""MemoryPreset's presets (GLIMPSE_SETTINGS values) and a rough, explained estimate of the GPU memory each needs.

Presets (what each trades):

- ``t4_balanced`` (default): a 16 GB T4 (Colab/Kaggle; ComfyUI sees about 15 GiB) at 1024 px, one view at a time,
  4 Lightning steps at strength 0.75, small depth ControlNet, tiled VAE (one pass, 2x2 tiles of 544 px at 1024 px:
  the fewest tiles, so the overlaps add little work). Planned to stay under 10 GiB with every model resident, so
  ComfyUI never moves weights between views. Trades: the small ControlNet follows depth less tightly than the full
  one, and tiled decoding costs a little time.
- ``t4_minimal``: 8 GB cards, or a T4 shared with other work. fp8-stored UNet weights (computed in fp16; ComfyUI
  casts per layer, works on any CUDA GPU), 768 px, 256 px VAE tiles. Trades: slight fp8 quality loss, lower
  resolution, more VAE tiles.
- ``speed``: throughput on 16 GB+ cards. 2-step Lightning at strength 0.5 (needs the 2-step file), 768 px, four views
  per sampler call, untiled VAE. Trades: 2-step detail and a lighter touch (keeps more of the render, blur included).
- ``quality``: 24 GB cards (16 GB with a bf16 VAE). 4 steps at strength 0.65 (closer to the render, fewer invented
  details), full-size depth ControlNet, 1024 px, untiled VAE (no tile seams). Trades: memory and time.
- ``custom``: the node's own fields.

Every preset turns cross-view attention on (``correspondence``, 4 anchors, each view attending to its 2 nearest): the
anchors are sampled first as one batch, then every other view in the preset's chunks. The plan below counts the anchor
pass and the anchors' record; on the T4 presets the record lives in CPU RAM.

The estimate (:func:`estimate_memory`) counts weights of the models resident during the run plus the largest
transient phase (sampling activations of a chunk or of the anchor batch, or VAE encode/decode), plus ComfyUI's
reserve. Its constants are named below,
with where each comes from. It is a planning number, good to about +-20 %, not a measurement: MemoryPreset's report
prints it next to the measured peak (CUDA) so that the two can be compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .lightning import check_steps, check_strength, executed_steps
from .types import Settings

GIB = 1024 ** 3

# -- Weights (parameter counts of the released models; bytes = params x dtype size) ---------------------------------
SDXL_UNET_PARAMS = 2_567_463_684  # SDXL base / Lightning UNet: 4.78 GiB in fp16, 2.39 GiB fp8
CONTROLNET_PARAMS = {"full": 1_251_000_000,  # diffusers SDXL ControlNet (encoder copy + zero convs): 2.33 GiB fp16
                     "small": 160_000_000}  # diffusers controlnet-depth-sdxl-1.0-small: 0.30 GiB fp16
SDXL_VAE_PARAMS = 83_653_863  # AutoencoderKL: 0.16 GiB fp16, 0.31 GiB fp32
SDXL_CLIP_PARAMS = 123_060_480 + 694_659_840  # CLIP-L + OpenCLIP-G text encoders: 1.52 GiB fp16
CLIP_BYTES = 2  # ComfyUI keeps the text encoders in fp16 on CUDA

# -- Activations ----------------------------------------------------------------------------------------------------
# UNet peak activation bytes per latent pixel (per view in the batch) at fp16 compute with memory-efficient attention
# (PyTorch SDPA, ComfyUI's default on CUDA). ComfyUI's own planning figure for SDXL is 0.01 MiB x 0.8 x 2 bytes =
# 16.8 KB per latent pixel (model_base.memory_required, marked "needs to be tweaked"); measured SDXL 1024 px batch-1
# fp16 peaks sit 0.6-1.0 GiB above the weights (resnet temporaries, q/k/v, the skip connections held for the up path),
# so this reserves about 3x ComfyUI's figure: 0.75 GiB for one 1024x1024 view (128x128 latent).
UNET_ACT_BYTES_PER_LATENT_PX_FP16 = 48 * 1024
# A ControlNet runs a copy of the UNet's encoder and middle block on the same latent and holds 13 residuals: about half
# of the UNet's activations for the full model; the small one is narrower (about a fifth).
CONTROLNET_ACT_FACTOR = {"full": 0.5, "small": 0.2}
# VAE peaks, ComfyUI's own planning figures for AutoencoderKL (comfy/sd.py VAE.memory_used_encode/_decode): ComfyUI
# offloads other models until this much is free, so a plan that wants no offload must budget the same numbers.
# Decode: 2178 x 64 bytes-per-dtype-byte per latent pixel; encode: 1767 per image pixel. Per image: ComfyUI splits
# batches to fit, and tiled VAE works tile by tile (tile_size px -> (tile_size/8)^2 latent pixels).
VAE_DECODE_PER_LATENT_PX = 2178 * 64
VAE_ENCODE_PER_PX = 1767
# Cross-view attention. The anchors' record keeps the projected keys and values of every self-attention layer of every
# anchor at every executed step (glimpse.crossview.record): SDXL has 10 such layers at 1/16 of the image (640
# channels) and 60 at 1/32 (1280 channels), so at 1024 px one anchor step is 10 x 4096 x 640 + 60 x 1024 x 1280 values
# per kept tensor (210 MB in fp16). Correspondence mode (one-token window, the default) keeps only the values, of the
# tokens with depth: the plan counts every token (an object that fills the frame); a real set's record is smaller by
# its share of tokens with depth (8 % for the fox sample). Extended mode keeps keys and values of every token.
SDXL_SELF_ATTENTION = ((16, 10, 640), (32, 60, 1280))  # (image pixels per token side, layers, channels)
RECORD_TENSORS = {"extended": 2, "correspondence": 1}
# Extra transient per view while attending, at the 1/16 layers where it is largest: the two anchors' fetched keys and
# values (4 x 4096 x 640 fp16 = 21 MB at 1024 px), and the local (correspondence) attention's gathered keys and values,
# float32 slices of 1024 query tokens x 9 (2 x 1024 x 9 x 640 x 4 = 47 MB; see glimpse.crossview.attention): under
# 0.05 GiB for a 1024 px view, 3.2 KiB per latent pixel. (An upper bound: the UNet's own activation peak is in its
# higher-resolution blocks, not at these layers.)
CROSS_VIEW_ACT_BYTES_PER_LATENT_PX = 3.2 * 1024
# Where each preset's plan must fit (the card it is for, less headroom), deciding whether the record may sit on the GPU.
PLAN_BUDGET_GIB = {"t4_balanced": 10.0, "t4_minimal": 7.0, "speed": 14.0, "quality": 22.0, "custom": 10.0}
CROSS_VIEW_MODES = ("off", "extended", "correspondence")

# ComfyUI's reserve on Linux (model_management.EXTRA_RESERVED_VRAM, 400 MiB) plus the CUDA context (~350 MiB on a T4,
# counted by the driver, not by torch).
OVERHEAD_BYTES = 400 * 1024 ** 2 + 350 * 1024 ** 2

LATENT_SCALE = 8  # SDXL VAE: 8 image pixels per latent pixel
UNET_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CONTROLNET_SIZES = ("full", "small")
PRESET_NAMES = ("t4_balanced", "t4_minimal", "speed", "quality", "custom")
DEFAULT_PRESET = "t4_balanced"

PRESETS: dict[str, Settings] = {
    "t4_balanced": Settings(preset="t4_balanced", steps=4, strength=0.75, controlnet_strength=0.5, resolution=1024,
                            views_per_chunk=1, tiled_vae=True, vae_tile_size=544, unet_dtype="default",
                            controlnet_size="small", cross_view="correspondence"),
    "t4_minimal": Settings(preset="t4_minimal", steps=4, strength=0.75, controlnet_strength=0.5, resolution=768,
                           views_per_chunk=1, tiled_vae=True, vae_tile_size=256, unet_dtype="fp8_e4m3fn",
                           controlnet_size="small", cross_view="correspondence"),
    "speed": Settings(preset="speed", steps=2, strength=0.5, controlnet_strength=0.5, resolution=768,
                      views_per_chunk=4, tiled_vae=False, vae_tile_size=512, unet_dtype="default",
                      controlnet_size="small", cross_view="correspondence"),
    "quality": Settings(preset="quality", steps=4, strength=0.65, controlnet_strength=0.5, resolution=1024,
                        views_per_chunk=1, tiled_vae=False, vae_tile_size=512, unet_dtype="default",
                        controlnet_size="full", cross_view="correspondence"),
}
PRESETS["custom"] = replace(PRESETS[DEFAULT_PRESET], preset="custom")
# A custom MemoryPreset in an API prompt written before cross-view attention existed has none of these fields: it
# gets Settings' own defaults for them (cross-view off), what such a prompt ran with.
CROSS_VIEW_FIELDS_ABSENT = {f.name: f.default for f in fields(Settings)
                            if f.name in ("cross_view", "anchor_count", "anchor_neighbours")}


def controlnet_size_of(params: int) -> str:
    """The CONTROLNET_SIZES class of a control model with ``params`` parameters: the nearer of CONTROLNET_PARAMS on a
    log scale (a T2I-Adapter's 79 M and the mid-size ControlNets' 0.5 B count as small)."""
    return min(CONTROLNET_PARAMS, key=lambda k: abs(math.log(max(params, 1) / CONTROLNET_PARAMS[k])))


def validate_settings(s: Settings) -> Settings:
    """Return ``s`` unchanged, or raise ValueError naming the first field that is out of range."""
    if s.preset not in PRESET_NAMES:
        raise ValueError(f"preset {s.preset!r} is not one of {list(PRESET_NAMES)}")
    check_steps(s.steps)
    check_strength(s.strength)
    if not 0.0 <= s.controlnet_strength <= 2.0:
        raise ValueError(f"controlnet_strength {s.controlnet_strength} is outside [0, 2]")
    if s.resolution < 64 or s.resolution % 64:
        raise ValueError(f"resolution {s.resolution} must be a multiple of 64, at least 64 (long side in pixels)")
    if s.views_per_chunk < 1:
        raise ValueError(f"views_per_chunk {s.views_per_chunk} must be at least 1")
    if s.vae_tile_size < 128 or s.vae_tile_size % 32:
        raise ValueError(f"vae_tile_size {s.vae_tile_size} must be a multiple of 32, at least 128")
    if s.unet_dtype not in UNET_DTYPES:
        raise ValueError(f"unet_dtype {s.unet_dtype!r} is not one of {list(UNET_DTYPES)}")
    if s.controlnet_size not in CONTROLNET_SIZES:
        raise ValueError(f"controlnet_size {s.controlnet_size!r} is not one of {list(CONTROLNET_SIZES)}")
    if s.cross_view not in CROSS_VIEW_MODES:
        raise ValueError(f"cross_view {s.cross_view!r} is not one of {list(CROSS_VIEW_MODES)}")
    if s.anchor_count < 1 or s.anchor_neighbours < 1:
        raise ValueError(f"anchor_count {s.anchor_count} and anchor_neighbours {s.anchor_neighbours} must be at "
                         "least 1")
    return s


def preset_settings(name: str, **custom) -> Settings:
    """The Settings of a named preset; for ``custom``, the default preset's values overridden by ``custom`` fields.

    Named presets ignore ``custom`` (MemoryPreset's custom fields apply only when preset is "custom").
    """
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is not one of {list(PRESET_NAMES)}")
    if name != "custom":
        return PRESETS[name]
    unknown = set(custom) - set(Settings.__dataclass_fields__) - {"preset"}
    if unknown:
        raise ValueError(f"unknown custom settings {sorted(unknown)}")
    return validate_settings(replace(PRESETS["custom"], **custom))


@dataclass(frozen=True)
class MemoryEstimate:
    """Planned GPU bytes, by part and phase. ``peak`` is the largest phase: resident weights + its transient +
    overhead (+ the anchor record when it sits on the GPU).

    In the anchor pass the text encoders are not counted: they are used once per set, before it, and ComfyUI moves
    them out when the sampler asks for room (once per set, never between views)."""

    unet_weights: int
    controlnet_weights: int
    vae_weights: int
    clip_weights: int
    sampling_activations: int
    vae_encode_peak: int
    vae_decode_peak: int
    overhead: int
    width: int
    height: int
    anchor_activations: int = 0
    anchor_record: int = 0
    record_on_gpu: bool = False

    @property
    def weights(self) -> int:
        return self.unet_weights + self.controlnet_weights + self.vae_weights + self.clip_weights

    def phases(self) -> dict[str, int]:
        base = self.weights + self.overhead + (self.anchor_record if self.record_on_gpu else 0)
        out = {"sampling": base + self.sampling_activations, "VAE encode": base + self.vae_encode_peak,
               "VAE decode": base + self.vae_decode_peak}
        if self.anchor_activations:
            out["anchor sampling"] = base - self.clip_weights + self.anchor_activations
        return out

    @property
    def peak(self) -> int:
        return max(self.phases().values())

    @property
    def peak_phase(self) -> str:
        phases = self.phases()
        return max(phases, key=phases.get)


def working_size(resolution: int, aspect: float = 1.0) -> tuple[int, int]:
    """(height, width) with the long side ``resolution`` and the short side rounded to a multiple of 64; ``aspect``
    is width / height."""
    if aspect <= 0:
        raise ValueError(f"aspect {aspect} must be positive")
    short = max(64, int(round(resolution / max(aspect, 1 / aspect) / 64)) * 64)
    return (short, resolution) if aspect >= 1 else (resolution, short)


def unet_weight_bytes(unet_dtype: str) -> int:
    """Bytes per stored UNet weight: 1 for the fp8 options, 2 (fp16, ComfyUI's choice for SDXL on CUDA) otherwise."""
    return 1 if unet_dtype.startswith("fp8") else 2


def anchor_record_bytes(width: int, height: int, anchors: int, executed_steps: int, dtype_bytes: int = 2,
                        tensors: int = 1, coverage: float = 1.0) -> int:
    """Bytes of an SDXL anchor record: ``tensors`` (1: values, 2: keys and values) of every self-attention layer of
    ``anchors`` views at every executed step, for the share ``coverage`` of their tokens (1: every token)."""
    per_step = sum(layers * math.ceil(height / f) * math.ceil(width / f) * channels
                   for f, layers, channels in SDXL_SELF_ATTENTION)
    return round(anchors * executed_steps * per_step * dtype_bytes * tensors * coverage)


def estimate_memory(s: Settings, aspect: float = 1.0, vae_dtype_bytes: int = 4, with_controlnet: bool = True,
                    with_clip: bool = True) -> MemoryEstimate:
    """Rough GPU bytes a run with settings ``s`` needs with every model resident (no CPU offload).

    ``vae_dtype_bytes``: 4 where ComfyUI runs the VAE in fp32 (T4 and other GPUs without bf16, the default here), 2 with
    a bf16/fp16 VAE (Ampere and newer). ``with_clip``: count the text encoders as resident (they are used once per set;
    ComfyUI offloads them first if the sampler needs room, which is cheap). ``with_controlnet``: a depth ControlNet of
    ``s.controlnet_size`` is part of the graph.
    """
    h, w = working_size(s.resolution, aspect)
    lat_px = math.ceil(w / LATENT_SCALE) * math.ceil(h / LATENT_SCALE)
    cn = s.controlnet_size if with_controlnet else None
    cross = s.cross_view != "off"
    per_view = lat_px * (UNET_ACT_BYTES_PER_LATENT_PX_FP16 * (1 + (CONTROLNET_ACT_FACTOR[cn] if cn else 0))
                         + (CROSS_VIEW_ACT_BYTES_PER_LATENT_PX if cross else 0))
    if s.tiled_vae:
        tile = min(s.vae_tile_size, max(w, h))
        dec_px, enc_px = (tile // LATENT_SCALE) ** 2, tile * tile
    else:
        dec_px, enc_px = lat_px, w * h
    plan = MemoryEstimate(
        unet_weights=SDXL_UNET_PARAMS * unet_weight_bytes(s.unet_dtype),
        controlnet_weights=CONTROLNET_PARAMS[cn] * 2 if cn else 0,
        vae_weights=SDXL_VAE_PARAMS * vae_dtype_bytes,
        clip_weights=SDXL_CLIP_PARAMS * CLIP_BYTES if with_clip else 0,
        sampling_activations=int(s.views_per_chunk * per_view),
        vae_encode_peak=VAE_ENCODE_PER_PX * enc_px * vae_dtype_bytes,
        vae_decode_peak=VAE_DECODE_PER_LATENT_PX * dec_px * vae_dtype_bytes,
        overhead=OVERHEAD_BYTES,
        width=w,
        height=h,
        anchor_activations=int(s.anchor_count * per_view) if cross else 0,
        anchor_record=anchor_record_bytes(w, h, s.anchor_count, executed_steps(s.steps, s.strength),
                                          tensors=RECORD_TENSORS[s.cross_view]) if cross else 0,
    )
    on_gpu = replace(plan, record_on_gpu=True)
    return on_gpu if cross and on_gpu.peak <= PLAN_BUDGET_GIB[s.preset] * GIB else plan

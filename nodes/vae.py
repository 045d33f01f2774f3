"""GlimpseVAEEncode / GlimpseVAEDecode: the VAE pass the settings name (untiled, or ONE tiled pass), fp16 where a card
has no bf16, with a guard that redoes an overflowing view in fp32."""
from __future__ import annotations

import logging
import weakref

import torch

import comfy.model_management as mm
import comfy.sd
import comfy.utils
from comfy_api.latest import io, ui

from ..glimpse.vae import FP16_SAFE_VAE, VaePlan, guarded, plan_vae
from .types import Settings

log = logging.getLogger(__name__)

HALF_MODES = ("auto", "always", "never")
DEFAULT_TILE = 512
_HALF_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def half_dtype(vae, mode: str) -> torch.dtype | None:
    """fp16 when asked (``always``), or (``auto``) where ComfyUI would run this VAE in fp32 on a CUDA card without
    bf16 (T4, V100, RTX 20xx: fp32 runs there at about 1/8 of the fp16 tensor-core rate); None: the VAE's own dtype."""
    if mode == "never" or vae.vae_dtype == torch.float16:
        return None
    if mode == "always":
        return torch.float16
    dev = torch.device(vae.device)
    if vae.vae_dtype == torch.float32 and dev.type == "cuda" and not mm.should_use_bf16(dev) \
            and mm.should_use_fp16(dev):
        return torch.float16
    return None


def half_twin(vae, dtype: torch.dtype):
    """A copy of ``vae`` built by ComfyUI in ``dtype`` (its own ModelPatcher, so ComfyUI loads and offloads it), made
    once per VAE object; the VAE the graph holds is left as it is, for the fp32 retry and for other nodes."""
    twin = _HALF_TWINS.get(vae)
    if twin is None or twin.vae_dtype != dtype:
        twin = comfy.sd.VAE(sd=vae.get_sd(), device=vae.device, dtype=dtype)
        _HALF_TWINS[vae] = twin
    return twin


def _one_pass(vae, x: torch.Tensor, plan: VaePlan, decode: bool) -> torch.Tensor:
    """One pass of ``vae`` over ``x`` ([B,4,h,w] latents or [B,3,H,W] pixels in -1..1) as ``plan`` says, in the VAE's
    dtype: ComfyUI's own model call, its load with the memory of one tile (or one image), and for a tiled plan its
    own feathered tile blending, once."""
    p = plan.latent() if decode else plan
    unit = p.tile if p.tiled else (p.height, p.width)
    if decode:
        need = vae.memory_used_decode((1, x.shape[1], *unit), vae.vae_dtype)
        model = vae.first_stage_model.decode
        scale, channels = vae.upscale_ratio, vae.output_channels
    else:
        need = vae.memory_used_encode((1, x.shape[1], *unit), vae.vae_dtype)
        model = vae.first_stage_model.encode
        scale, channels = 1 / vae.downscale_ratio, vae.latent_channels
    mm.load_models_gpu([vae.patcher], memory_required=need, force_full_load=vae.disable_offload)

    def run(t: torch.Tensor) -> torch.Tensor:
        mm.throw_exception_if_processing_interrupted()
        return model(t.to(vae.vae_dtype).to(vae.device)).to(vae.output_device).float()

    if p.tiled:
        return comfy.utils.tiled_scale(x, run, tile_x=p.tile[1], tile_y=p.tile[0], overlap=p.overlap,
                                       upscale_amount=scale, out_channels=channels, output_device=vae.output_device,
                                       pbar=comfy.utils.ProgressBar(x.shape[0] * p.tiles))
    batch = max(1, int(mm.get_free_memory(vae.device) / max(1, need)))  # as ComfyUI's VAE.decode/encode
    return torch.cat([run(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


def run_vae(vae, x: torch.Tensor, plan: VaePlan, decode: bool, half: str, tile_size: int,
            what: str) -> tuple[torch.Tensor, str]:
    """The pass with the fp16 twin and its guard where :func:`half_dtype` says so; an untiled pass that runs out of
    memory is done again as one tiled pass of ``tile_size``. Returns the output and a line saying what ran."""
    dtype = half_dtype(vae, half)
    redone: list[int] = []
    try:
        if dtype is None:
            out = _one_pass(vae, x, plan, decode)
        else:
            out, redone = guarded(lambda t: _one_pass(half_twin(vae, dtype), t, plan, decode), x,
                                  lambda t: _one_pass(vae, t, plan, decode), what, log)
    except mm.OOM_EXCEPTION:
        if plan.tiled:
            raise
        oom = True
    else:
        oom = False
    if oom:  # outside the except block, so that the failed pass's tensors are freed first (as ComfyUI does)
        plan = plan_vae(True, tile_size, plan.height, plan.width)
        log.warning("%s: out of memory untiled; running it as %s", what, plan.describe())
        return run_vae(vae, x, plan, decode, half, tile_size, what)
    ran = str(dtype or vae.vae_dtype).removeprefix("torch.")
    line = f"{plan.describe()}, {x.shape[0]} view(s), {ran}"
    if redone:
        line += f"; item(s) {', '.join(map(str, redone))} redone in {str(vae.vae_dtype).removeprefix('torch.')}"
    return out, line


def _execute(name: str, vae, x: torch.Tensor, decode: bool, settings, tiled: bool, tile_size: int,
             fp16: str) -> tuple[torch.Tensor, ui.PreviewText]:
    """A node's pass: the settings' tiling (else the node's own), planned for ``x``'s image size, run, reported."""
    if settings is not None:
        tiled, tile_size = settings.tiled_vae, settings.vae_tile_size
    scale = vae.spacial_compression_decode() if decode else 1
    plan = plan_vae(tiled, tile_size, x.shape[-2] * scale, x.shape[-1] * scale)
    out, line = run_vae(vae, x, plan, decode, fp16, tile_size, name)
    log.info("%s: %s", name, line)
    return out, ui.PreviewText(line)


def _schema(node_id: str, what: str, first: io.Input, output) -> io.Schema:
    return io.Schema(
        node_id=node_id,
        display_name=f"VAE {what} (Glimpse)",
        category="Glimpse",
        description=f"VAE {what.lower()} as the settings say: one untiled pass, or one tiled pass with blended "
                    f"overlaps (never core VAE{what}Tiled's three passes); fp16 on cards without bf16, with an fp32 "
                    "redo of any view that overflows.",
        inputs=[first, *_inputs()],
        outputs=[output],
    )


def _inputs() -> list[io.Input]:
    return [
        io.Vae.Input("vae", tooltip="The VAE, e.g. Load VAE with sdxl_vae_fp16_fix.safetensors (madebyollin/"
                                    "sdxl-vae-fp16-fix) or LightningLoader's."),
        Settings.Input("settings", optional=True,
                       tooltip="GLIMPSE_SETTINGS from MemoryPreset: its tiled_vae and vae_tile_size decide the pass "
                               "(tiled and tile_size below are then ignored)."),
        io.Boolean.Input("tiled", default=False, optional=True,
                         tooltip="Without settings: one tiled pass (tiles of at most tile_size px, overlap 64 px, "
                                 "blended) instead of one untiled pass."),
        io.Int.Input("tile_size", default=DEFAULT_TILE, min=128, max=4096, step=32, optional=True,
                     tooltip="Without settings: the largest tile side in pixels; tiles are split evenly. Also the "
                             "tile of the fallback when an untiled pass runs out of memory."),
        io.Combo.Input("fp16", options=list(HALF_MODES), default="auto", optional=True,
                       tooltip="auto: fp16 on CUDA cards without bf16 (T4, V100, RTX 20xx), where ComfyUI would run "
                               f"the VAE in fp32; needs an fp16-safe VAE ({FP16_SAFE_VAE}). always: fp16 on any "
                               "device. never: the VAE's own dtype. In fp16 a view that overflows (NaN/inf) is done "
                               "again in the VAE's own dtype, and the log says so."),
    ]


class GlimpseVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(node_id="GlimpseVAEEncode", what="Encode",
                       first=io.Image.Input("pixels", tooltip="The views to encode (IMAGE, e.g. LoadViewSet images)."),
                       output=io.Latent.Output(display_name="LATENT", tooltip="The views' latents."))

    @classmethod
    def execute(cls, pixels: torch.Tensor, vae, settings=None, tiled: bool = False, tile_size: int = DEFAULT_TILE,
                fp16: str = "auto") -> io.NodeOutput:
        x = vae.process_input(vae.vae_encode_crop_pixels(pixels[..., :3]).movedim(-1, 1))
        samples, report = _execute("GlimpseVAEEncode", vae, x, False, settings, tiled, tile_size, fp16)
        return io.NodeOutput({"samples": samples}, ui=report)


class GlimpseVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(node_id="GlimpseVAEDecode", what="Decode",
                       first=io.Latent.Input("samples", tooltip="The latents to decode (e.g. from the sampler)."),
                       output=io.Image.Output(display_name="IMAGE", tooltip="The decoded views, 0..1."))

    @classmethod
    def execute(cls, samples: dict, vae, settings=None, tiled: bool = False, tile_size: int = DEFAULT_TILE,
                fp16: str = "auto") -> io.NodeOutput:
        z = samples["samples"]
        if z.dim() != 4:
            raise ValueError(f"GlimpseVAEDecode takes image latents [B,C,h,w], got shape {list(z.shape)}")
        out, report = _execute("GlimpseVAEDecode", vae, z, True, settings, tiled, tile_size, fp16)
        return io.NodeOutput(vae.process_output(out).movedim(1, -1), ui=report)


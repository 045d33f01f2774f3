"""MemoryPreset (GLIMPSE_SETTINGS for a GPU budget, with a memory report) and MemoryReport (the report after a run)."""
from __future__ import annotations

import torch

import comfy.model_management as mm
from comfy_api.latest import io, ui

from ..glimpse.lightning import LIGHTNING_STEPS
from ..glimpse.memory_report import LoadedModel, MemoryState, format_report
from ..glimpse.presets import (
    CONTROLNET_SIZES,
    CROSS_VIEW_FIELDS_ABSENT,
    CROSS_VIEW_MODES,
    DEFAULT_PRESET,
    PRESET_NAMES,
    PRESETS,
    UNET_DTYPES,
    estimate_memory,
    preset_settings,
)
from ..glimpse.types import Settings as SettingsValue
from .crossview import STORE
from .types import Settings

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def memory_state() -> MemoryState:
    """What ComfyUI's model management knows now; resets the CUDA peak counter (peak is "since the last report")."""
    dev = mm.get_torch_device()
    cpu = torch.device("cpu")
    models = []
    for lm in list(mm.current_loaded_models):
        patcher = lm.model
        if patcher is None:
            continue
        models.append(LoadedModel(type(patcher.model).__name__, int(lm.model_memory()), int(lm.model_loaded_memory())))
    peak = None
    if dev.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(dev))
        torch.cuda.reset_peak_memory_stats(dev)
    return MemoryState(device=mm.get_torch_device_name(dev), vram_total=int(mm.get_total_memory(dev)),
                       vram_free=int(mm.get_free_memory(dev)), ram_total=int(mm.get_total_memory(cpu)),
                       ram_free=int(mm.get_free_memory(cpu)), loaded_models=models, peak_allocated=peak,
                       anchor_records=[r.summary() for r in STORE.records()])


def report(settings: SettingsValue) -> str:
    dev = mm.get_torch_device()
    vae_dtype = mm.vae_dtype(dev, [torch.bfloat16, torch.float32])
    estimate = estimate_memory(settings, vae_dtype_bytes=torch.finfo(vae_dtype).bits // 8)
    return format_report(memory_state(), settings, estimate, vae_dtype=_DTYPE_NAMES.get(vae_dtype, str(vae_dtype)))


def _custom(steps: str, strength: float, controlnet_strength: float, resolution: int, views_per_chunk: int,
            tiled_vae: bool, vae_tile_size: int, unet_dtype: str, controlnet_size: str, cross_view: str | None,
            anchor_count: int | None, anchor_neighbours: int | None) -> dict:
    """The custom fields as Settings fields; cross-view fields a prompt lacks (None) as CROSS_VIEW_FIELDS_ABSENT."""
    if str(steps) not in {str(n) for n in LIGHTNING_STEPS}:
        raise ValueError(f"steps {steps!r} must be one of {', '.join(map(str, LIGHTNING_STEPS))}")
    given = {"cross_view": cross_view, "anchor_count": anchor_count, "anchor_neighbours": anchor_neighbours}
    cross = {k: CROSS_VIEW_FIELDS_ABSENT[k] if v is None else v for k, v in given.items()}
    return dict(steps=int(steps), strength=float(strength), controlnet_strength=float(controlnet_strength),
                resolution=int(resolution), views_per_chunk=int(views_per_chunk), tiled_vae=bool(tiled_vae),
                vae_tile_size=int(vae_tile_size), unet_dtype=unet_dtype, controlnet_size=controlnet_size,
                cross_view=cross["cross_view"], anchor_count=int(cross["anchor_count"]),
                anchor_neighbours=int(cross["anchor_neighbours"]))


class MemoryPreset(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        c = PRESETS["custom"]
        custom = " Used only when preset is custom."
        return io.Schema(
            node_id="MemoryPreset",
            display_name="Memory Preset (Glimpse)",
            category="Glimpse",
            description="Settings for a GPU budget (Lightning steps and strength, ControlNet strength and size, "
                        "working resolution, views per chunk, VAE tiling, UNet dtype) and a memory report: device, "
                        "free VRAM/RAM, the models ComfyUI has loaded, the CUDA peak since the last report, and the "
                        "preset's estimated need with a warning when it will not fit. t4_balanced plans a 16 GB T4 "
                        "at 1024 px under 10 GiB; t4_minimal for 8 GB; speed and quality for bigger cards. The custom "
                        "fields apply only when preset is custom. The report is taken when the node runs (before "
                        "models load on a first run); wire a Memory Report node after the sampler for a report "
                        "after the run.",
            inputs=[
                io.Combo.Input("preset", options=list(PRESET_NAMES), default=DEFAULT_PRESET,
                               tooltip="t4_balanced: T4 16 GB, 1024 px, small ControlNet, tiled VAE. t4_minimal: "
                                       "8 GB, fp8 UNet, 768 px. speed: 2 steps, 4 views per chunk, 768 px (16 GB+). "
                                       "quality: full ControlNet, untiled VAE, 1024 px (24 GB). custom: the fields "
                                       "below."),
                io.Combo.Input("steps", options=[str(n) for n in LIGHTNING_STEPS], default=str(c.steps),
                               tooltip="Lightning step count N (must match the Lightning file)." + custom),
                io.Float.Input("strength", default=c.strength, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of the N grid steps to redo, in (0, 1]." + custom),
                io.Float.Input("controlnet_strength", default=c.controlnet_strength, min=0.0, max=2.0, step=0.01,
                               tooltip="Depth ControlNet strength." + custom),
                io.Int.Input("resolution", default=c.resolution, min=64, max=4096, step=64,
                             tooltip="Working resolution: long side in pixels, a multiple of 64." + custom),
                io.Int.Input("views_per_chunk", default=c.views_per_chunk, min=1, max=64,
                             tooltip="Views sampled together in one batch (memory grows linearly)." + custom),
                io.Boolean.Input("tiled_vae", default=c.tiled_vae,
                                 tooltip="VAE Encode/Decode (Glimpse) run one tiled pass (blended overlaps) instead "
                                         "of one untiled pass: a much lower VAE peak, a little more work." + custom),
                io.Int.Input("vae_tile_size", default=c.vae_tile_size, min=128, max=4096, step=32,
                             tooltip="Largest VAE tile side in pixels when tiled (tiles are split evenly)." + custom),
                io.Combo.Input("unet_dtype", options=list(UNET_DTYPES), default=c.unet_dtype,
                               tooltip="UNet weight storage: default (fp16) or fp8 (half the UNet memory, slight "
                                       "quality loss; computed in fp16)." + custom),
                io.Combo.Input("controlnet_size", options=list(CONTROLNET_SIZES), default=c.controlnet_size,
                               tooltip="The depth ControlNet the memory plan counts: full (2.3 GiB) or small "
                                       "(0.3 GiB); Depth ControlNet reports a connected one of the other size."
                                       + custom),
                io.Combo.Input("cross_view", options=list(CROSS_VIEW_MODES), default=c.cross_view, optional=True,
                               tooltip="Cross-View Attention's mode: off (views sampled independently), extended "
                                       "(attention over the anchors' whole images) or correspondence (only near "
                                       "each token's 3D point; needs depth)." + custom + " An API prompt "
                                       "without the three cross-view fields gets off (as it ran before them)."),
                io.Int.Input("anchor_count", default=c.anchor_count, min=1, max=64, optional=True,
                             tooltip="Anchor views Load View Set picks ('auto'); they are sampled as one batch, "
                                     "so the plan's anchor phase grows with them." + custom),
                io.Int.Input("anchor_neighbours", default=c.anchor_neighbours, min=1, max=8, optional=True,
                             tooltip="Anchors each view attends to (the nearest by viewing direction)." + custom),
            ],
            outputs=[
                Settings.Output(display_name="settings",
                                tooltip="GLIMPSE_SETTINGS for LightningLoader and the other Glimpse nodes."),
                io.String.Output(display_name="report",
                                 tooltip="The memory report (also shown on the node)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset: str, steps: str, strength: float, controlnet_strength: float, resolution: int,
                        views_per_chunk: int, tiled_vae: bool, vae_tile_size: int, unet_dtype: str,
                        controlnet_size: str, cross_view: str | None = None, anchor_count: int | None = None,
                        anchor_neighbours: int | None = None) -> bool | str:
        try:
            preset_settings(preset, **_custom(steps, strength, controlnet_strength, resolution, views_per_chunk,
                                              tiled_vae, vae_tile_size, unet_dtype, controlnet_size, cross_view,
                                              anchor_count, anchor_neighbours))
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, preset: str, steps: str, strength: float, controlnet_strength: float, resolution: int,
                views_per_chunk: int, tiled_vae: bool, vae_tile_size: int, unet_dtype: str,
                controlnet_size: str, cross_view: str | None = None, anchor_count: int | None = None,
                anchor_neighbours: int | None = None) -> io.NodeOutput:
        settings = preset_settings(preset, **_custom(steps, strength, controlnet_strength, resolution, views_per_chunk,
                                                     tiled_vae, vae_tile_size, unet_dtype, controlnet_size, cross_view,
                                                     anchor_count, anchor_neighbours))
        text = report(settings)
        return io.NodeOutput(settings, text, ui=ui.PreviewText(text))


class MemoryReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlimpseMemoryReport",
            display_name="Memory Report (Glimpse)",
            category="Glimpse",
            description="The memory report of MemoryPreset, taken when this node runs: wire any output of the run "
                        "(e.g. the decoded IMAGE) into 'after' to report the loaded models and the CUDA peak after "
                        "sampling. Runs on every queue (its result is never cached).",
            is_output_node=True,
            inputs=[
                Settings.Input("settings", tooltip="The GLIMPSE_SETTINGS whose estimate to compare against."),
                io.AnyType.Input("after", optional=True,
                                 tooltip="Any value of the run; only orders this node after it."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The memory report (also shown on the node).")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # memory changes without any input changing: always run

    @classmethod
    def execute(cls, settings: SettingsValue, after=None) -> io.NodeOutput:
        text = report(settings)
        return io.NodeOutput(text, ui=ui.PreviewText(text))

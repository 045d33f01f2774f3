"""DepthControlNet: renderer depth (or monocular depth made consistent across views) as one depth hint for the set."""
from __future__ import annotations

import logging
from dataclasses import replace

import torch

import nodes
from comfy_api.latest import io

from ..glimpse.depth import MODES, align_monocular, depth_hint, merge_depth, with_set_range
from ..glimpse.presets import CONTROLNET_PARAMS, controlnet_size_of
from ..glimpse.types import DepthMaps
from ..glimpse.types import Settings as SettingsValue
from ..glimpse.viewset import views_without_depth
from .depth_estimator import ESTIMATOR_FOLDER, NO_ESTIMATOR, estimate_inverse_depth, estimator_dir, estimator_names
from .types import Depth, Settings

log = logging.getLogger(__name__)


def check_controlnet_size(control_net, settings: SettingsValue) -> str | None:
    """A warning when the connected control model is not of the size the settings plan memory for, else None."""
    model = getattr(control_net, "control_model", None) or getattr(control_net, "t2i_model", None)
    if model is None:
        return None
    params = sum(p.numel() for p in model.parameters())
    size = controlnet_size_of(params)
    if size == settings.controlnet_size:
        return None
    planned = CONTROLNET_PARAMS[settings.controlnet_size]
    return (f"DepthControlNet: preset {settings.preset} plans memory for a {settings.controlnet_size} depth ControlNet "
            f"({planned / 1e9:.2f} B parameters) but the connected one has {params / 1e9:.2f} B ({size}): the memory "
            f"estimate is off by about {(params - planned) * 2 / 2**30:+.1f} GiB in fp16. Load the "
            f"{settings.controlnet_size} ControlNet, or pick a preset (or custom controlnet_size) of {size}.")


def _views(indices: list[int]) -> str:
    return ", ".join(f"view_{i:02d}" for i in indices)


class DepthControlNet(io.ComfyNode):
    """Builds the set's hint, then applies it through core ``ControlNetApplyAdvanced.apply_controlnet``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DepthControlNet",
            display_name="Depth ControlNet (view set)",
            category="Glimpse",
            description="Applies a depth ControlNet to the conditioning with ONE depth hint for the whole view set: "
                        "near/far are robust percentiles over every valid pixel of every view, so the same depth has "
                        "the same grey in every view; near is bright, background 0. Renderer depth is used where it "
                        "exists; views without it (or all views, with no depth connected) get monocular depth from a "
                        "depth estimator, normalised jointly and aligned (scale and shift) to the renderer depth. "
                        "Works with diffusers/xinsir depth ControlNets (full, mid, small) and the T2I-Adapter depth "
                        "from core ControlNetLoader; for ControlNet Union promax put core SetUnionControlNetType "
                        "(type depth) before this node.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Positive conditioning (e.g. from GlimpsePrompt)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning."),
                io.ControlNet.Input("control_net",
                                    tooltip="A depth ControlNet or T2I-Adapter from core ControlNetLoader (union: "
                                            "through SetUnionControlNetType)."),
                Depth.Input("depth", optional=True,
                            tooltip="Renderer depth from LoadViewSet. Views without valid depth fall back to the "
                                    "depth estimator."),
                io.Image.Input("images", optional=True,
                               tooltip="The views, for monocular depth estimation where renderer depth is missing."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Opacity per view (LoadViewSet mask): where it is below 0.5, estimated depth "
                                      "counts as background. Renderer depth carries its own validity."),
                io.Float.Input("strength", default=0.5, min=0.0, max=10.0, step=0.01,
                               tooltip="ControlNet strength; 0 returns the conditioning unchanged. Ignored when "
                                       "settings are connected."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control starts."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Sampling progress at which the control ends."),
                io.Combo.Input("normalisation", options=list(MODES), default=MODES[0],
                               tooltip="shared_inverse: grey linear in 1/z between the set's near and far (like the "
                                       "inverse-depth maps these ControlNets were trained on); shared_linear: linear "
                                       "in z. Both use one near/far for all views."),
                io.Vae.Input("vae", optional=True, tooltip="Passed to the ControlNet for models that need it."),
                Settings.Input("settings", optional=True,
                               tooltip="GLIMPSE_SETTINGS from MemoryPreset: when connected, its controlnet_strength "
                                       "is the strength, and a control model of another size than its "
                                       "controlnet_size (the one its memory plan counts) is reported in the log."),
                io.Combo.Input("depth_estimator", options=[NO_ESTIMATOR, *estimator_names()], default=NO_ESTIMATOR,
                               optional=True,
                               tooltip="A transformers depth model folder in models/depth_estimators (safetensors + "
                                       "config.json, e.g. Depth-Anything-V2-Small-hf), used for views without "
                                       "renderer depth."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="Positive conditioning with the control."),
                io.Conditioning.Output(display_name="negative", tooltip="Negative conditioning with the control."),
                io.Image.Output(display_name="hint", tooltip="The depth hint per view (near bright, background 0)."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, control_net, strength: float = 0.5, start_percent: float = 0.0,
                end_percent: float = 1.0, normalisation: str = MODES[0], depth: DepthMaps | None = None,
                images: torch.Tensor | None = None, mask: torch.Tensor | None = None, vae=None,
                settings: SettingsValue | None = None, depth_estimator: str = NO_ESTIMATOR) -> io.NodeOutput:
        if settings is not None:
            strength = settings.controlnet_strength
            mismatch = check_controlnet_size(control_net, settings)
            if mismatch:
                log.warning(mismatch)
        depth_estimator = depth_estimator or NO_ESTIMATOR
        if strength == 0:  # no control: no estimator run; the preview shows the renderer depth if there is any
            if depth is not None and bool(depth.valid.any()):
                return io.NodeOutput(positive, negative, depth_hint(depth, normalisation))
            ref = images if images is not None else depth.depth.unsqueeze(-1) if depth is not None else None
            shape = (*ref.shape[:3], 3) if ref is not None else (1, 64, 64, 3)
            return io.NodeOutput(positive, negative, torch.zeros(shape, dtype=torch.float32))
        need = cls.check(depth, images, mask, depth_estimator)
        if need:
            depth = cls.monocular(depth, images, mask, depth_estimator, need)
        hint = depth_hint(depth, normalisation)
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, hint, strength,
                                                                    start_percent, end_percent, vae=vae)
        return io.NodeOutput(pos, neg, hint)

    @staticmethod
    def check(depth: DepthMaps | None, images, mask, estimator: str) -> list[int]:
        """Validate the inputs before any model work; returns the views that need monocular depth."""
        if depth is None and images is None:
            raise ValueError("DepthControlNet needs depth (GLIMPSE_DEPTH from LoadViewSet) or images with a "
                             "depth_estimator")
        n = depth.depth.shape[0] if depth is not None else images.shape[0]
        size = tuple(depth.depth.shape[1:]) if depth is not None else tuple(images.shape[1:3])
        if images is not None and (images.shape[0], *images.shape[1:3]) != (n, *size):
            raise ValueError(f"images are {images.shape[0]} views of {images.shape[2]}x{images.shape[1]} but depth is "
                             f"{n} views of {size[1]}x{size[0]}; connect both from the same LoadViewSet")
        if mask is not None and (mask.shape[0] not in (1, n) or tuple(mask.shape[1:]) != size):
            raise ValueError(f"mask is {mask.shape[0]} views of {mask.shape[2]}x{mask.shape[1]} but the set is {n} "
                             f"views of {size[1]}x{size[0]}")
        need = list(range(n)) if depth is None else views_without_depth(depth)
        if need and (images is None or estimator == NO_ESTIMATOR):
            what = "no depth is connected" if depth is None else f"{_views(need)} have no valid renderer depth"
            raise ValueError(f"DepthControlNet: {what}; connect images and choose a depth_estimator for monocular "
                             "depth, or give those views depth files")
        if need and estimator_dir(estimator) is None:
            raise FileNotFoundError(f"depth estimator {estimator!r} is not in models/{ESTIMATOR_FOLDER} (found: "
                                    f"{', '.join(estimator_names()) or 'none'})")
        return need

    @staticmethod
    def monocular(depth: DepthMaps | None, images: torch.Tensor, mask, estimator: str, need: list[int]) -> DepthMaps:
        """Estimate every view (the views with renderer depth anchor the alignment), keep renderer depth, fill
        ``need``."""
        pred = estimate_inverse_depth(estimator, images)
        fg = (mask > 0.5).expand(pred.shape[0], -1, -1) if mask is not None else None
        aligned, notes = align_monocular(pred, depth, fg)
        for line in notes:
            log.info("DepthControlNet: %s", line)
        if depth is None or not bool(depth.valid.any()):  # relative units: a range of their own
            return with_set_range(aligned)
        merged = merge_depth(depth, aligned, need)  # aligned to metric renderer depth
        if depth.near is not None and depth.far is not None:  # keep the set-wide range a chunk was given
            return replace(merged, near=depth.near, far=depth.far)
        return with_set_range(merged)

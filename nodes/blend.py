"""ConfidenceBlend: keep the render where the enhanced view is not trusted (renderer opacity, depth edges, grazing)."""
from __future__ import annotations

import logging

import torch

from comfy_api.latest import io

from ..glimpse.blend import confidence_blend, confidence_preview
from ..glimpse.resize import resize_to
from ..glimpse.types import Cameras as CamerasValue
from ..glimpse.types import DepthMaps
from .types import Cameras, Depth

log = logging.getLogger(__name__)


class ConfidenceBlend(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ConfidenceBlend",
            display_name="Confidence Blend",
            category="Glimpse",
            description="Puts the enhanced views back only where the renderer's own signals say they can be trusted: "
                        "opaque pixels (mask), away from depth discontinuities and silhouettes, on surfaces not seen "
                        "at a grazing angle (normals from depth and cameras). The signals' weighted geometric mean is "
                        "thresholded and the trusted region is feathered inwards: trusted pixels take the enhanced "
                        "value exactly, untrusted ones and the background keep the original exactly, with a smooth "
                        "ramp between. Original and mask are resized to the enhanced views' size when they differ.",
            inputs=[
                io.Image.Input("original", tooltip="The input renders (e.g. LoadViewSet images)."),
                io.Image.Input("enhanced", tooltip="The enhanced views (e.g. from VAEDecode), same views and order."),
                io.Mask.Input("mask", tooltip="Render opacity per view (LoadViewSet mask). Pixels at or below 0.5 "
                                              "are never taken from the enhanced view."),
                Depth.Input("depth", tooltip="Renderer depth from LoadViewSet (any resolution; resampled nearest)."),
                Cameras.Input("cameras", tooltip="The views' cameras from LoadViewSet."),
                io.Float.Input("threshold", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Combined confidence a pixel needs to take the enhanced value. 0 trusts every "
                                       "opaque pixel, 1 only pixels where every signal is fully confident."),
                io.Int.Input("feather_radius", default=8, min=0, max=256,
                             tooltip="Width in pixels of the ramp inside the trusted region from the original (at "
                                     "its edge) to the enhanced view (deeper than this); 0 makes a hard edge."),
                io.Float.Input("opacity_weight", default=1.0, min=0.0, max=8.0, step=0.1,
                               tooltip="Weight of render opacity in the combined confidence; 0 ignores it."),
                io.Float.Input("edge_weight", default=1.0, min=0.0, max=8.0, step=0.1,
                               tooltip="Weight of the distance to depth discontinuities; 0 ignores it."),
                io.Float.Input("grazing_weight", default=1.0, min=0.0, max=8.0, step=0.1,
                               tooltip="Weight of the viewing angle (surfaces seen edge-on are distrusted); 0 ignores "
                                       "it."),
                io.Int.Input("edge_radius", default=8, min=1, max=256,
                             tooltip="Distance in pixels from a depth discontinuity at which the edge signal reaches "
                                     "full confidence."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The blended views."),
                io.Mask.Output(display_name="confidence",
                               tooltip="The weight of the enhanced view per pixel (1 = enhanced, 0 = original)."),
                io.Image.Output(display_name="preview",
                                tooltip="The original in grey, tinted green where the enhanced view is used and red "
                                        "where the original is kept."),
            ],
        )

    @classmethod
    def execute(cls, original: torch.Tensor, enhanced: torch.Tensor, mask: torch.Tensor, depth: DepthMaps,
                cameras: CamerasValue, threshold: float = 0.6, feather_radius: int = 8, opacity_weight: float = 1.0,
                edge_weight: float = 1.0, grazing_weight: float = 1.0, edge_radius: int = 8) -> io.NodeOutput:
        n = enhanced.shape[0]
        if mask.dim() == 2:
            mask = mask[None]
        if mask.shape[0] == 1 and n > 1:
            mask = mask.expand(n, -1, -1)
        for what, count in (("original", original.shape[0]), ("mask", mask.shape[0]),
                            ("depth", depth.depth.shape[0]), ("cameras", len(cameras))):
            if count != n:
                raise ValueError(f"ConfidenceBlend: {n} enhanced views but {count} in {what}")
        size = tuple(enhanced.shape[1:3])
        if tuple(original.shape[1:3]) != size:
            log.info("ConfidenceBlend: resizing original %dx%d and mask to the enhanced %dx%d", original.shape[2],
                     original.shape[1], size[1], size[0])
        original = resize_to(original, size)
        mask = resize_to(mask, size)
        no_depth = [i for i in range(n) if not bool(depth.valid[i].any())]
        if no_depth and (edge_weight > 0 or grazing_weight > 0):
            log.warning("ConfidenceBlend: %s have no renderer depth: their original is kept (set edge_weight and "
                        "grazing_weight to 0 to trust them by opacity alone)",
                        ", ".join(f"view_{i:02d}" for i in no_depth))
        weights = {"opacity": opacity_weight, "edge": edge_weight, "grazing": grazing_weight}
        out, weight, _ = confidence_blend(original, enhanced.to(original.device), mask.to(original.device), depth,
                                          cameras, threshold=threshold, feather_radius=feather_radius,
                                          weights=weights, edge_radius=edge_radius)
        return io.NodeOutput(out, weight, confidence_preview(original, weight, mask))

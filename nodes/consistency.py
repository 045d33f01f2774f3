"""ViewConsistency: do the enhanced views still agree with each other? Scores as JSON, shown on the node."""
from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from comfy_api.latest import io, ui

from ..glimpse.consistency import score_views
from ..glimpse.types import Cameras as CamerasValue
from ..glimpse.types import DepthMaps
from .types import Cameras, Depth


def _resize(x: torch.Tensor | None, size: tuple[int, int], channels_last: bool) -> torch.Tensor | None:
    if x is None or tuple(x.shape[1:3]) == size:
        return x
    t = x.movedim(-1, 1) if channels_last else x[:, None]
    t = F.interpolate(t.float(), size=size, mode="bilinear", antialias=t.shape[-2] > size[0], align_corners=False)
    return t.movedim(1, -1) if channels_last else t[:, 0]


def _fmt(x, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def summary_text(scores: dict) -> str:
    """A few readable lines for the canvas, followed by the JSON without the per-pair list."""
    lines = []
    cons = scores.get("consistency")
    if cons is not None:
        line = f"consistency: PSNR {_fmt(cons['psnr'])} dB, MAE {_fmt(cons['mae'], 4)} " \
               f"({cons['pairs_scored']}/{cons['pairs_total']} pairs)"
        ref = (scores.get("reference") or {}).get("consistency")
        if ref:
            line += f"; reference PSNR {_fmt(ref['psnr'])} dB"
        lines.append(line)
    lines.append(f"colour drift: mean {_fmt(scores.get('colour_drift'))}, max {_fmt(scores.get('colour_drift_max'))}"
                 " (Delta E)")
    if scores.get("sharpness_gain") is not None:
        lines.append(f"sharpness gain: {_fmt(scores['sharpness_gain'])}x")
    lines += [f"note: {n}" for n in scores.get("notes", [])]
    compact = {k: v for k, v in scores.items() if k != "pairs"}
    return "\n".join(lines) + "\n\n" + json.dumps(compact, indent=1)


class ViewConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ViewConsistency",
            display_name="View Consistency",
            category="Glimpse",
            description="Scores how well the views of a set agree: each view j is warped into its ring neighbours i "
                        "(pairs i,i+1 and i,i+2) with view i's renderer depth and both cameras; pixels foreground in "
                        "both that pass an occlusion test (and are away from depth edges) give a masked PSNR and MAE. "
                        "Also per-view colour drift (CIE Lab mean and spread against the set's median; with reference "
                        "views, of the change from them) and sharpness gain (Laplacian variance inside the mask, over "
                        "the reference). Output: one JSON object, also shown on the node.",
            inputs=[
                io.Image.Input("views", tooltip="The views to score (e.g. ConfidenceBlend images)."),
                Depth.Input("depth", optional=True,
                            tooltip="Renderer depth of the set; without it only colour drift and sharpness are "
                                    "computed."),
                Cameras.Input("cameras", optional=True, tooltip="The views' cameras."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Render opacity per view; pixels at or above 0.5 are foreground."),
                io.Image.Input("reference", optional=True,
                               tooltip="The input renders: their own consistency is reported as the ceiling, and "
                                       "they are the baseline of the sharpness gain and colour drift."),
            ],
            outputs=[io.String.Output(display_name="scores",
                                      tooltip="The scores as JSON: consistency.psnr, consistency.mae, colour_drift, "
                                              "sharpness_gain, reference, per_view, pairs, notes.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, views: torch.Tensor, depth: DepthMaps | None = None, cameras: CamerasValue | None = None,
                mask: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> io.NodeOutput:
        n = views.shape[0]
        size = tuple(views.shape[1:3])
        for what, count in (("mask", None if mask is None else mask.shape[0]),
                            ("reference", None if reference is None else reference.shape[0]),
                            ("depth", None if depth is None else depth.depth.shape[0]),
                            ("cameras", None if cameras is None else len(cameras))):
            if count is not None and count != n:
                raise ValueError(f"ViewConsistency: {n} views but {count} in {what}")
        scores = score_views(views, _resize(mask, size, False), depth, cameras, _resize(reference, size, True))
        text = json.dumps(scores, allow_nan=False)
        return io.NodeOutput(text, ui=ui.PreviewText(summary_text(scores)))

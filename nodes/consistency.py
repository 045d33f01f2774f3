"""ViewConsistency: do the enhanced views still agree with each other? Scores as JSON, shown on the node."""
from __future__ import annotations

import json

import torch

from comfy_api.latest import io, ui

from ..glimpse.cameras import cat_cameras, select_cameras
from ..glimpse.consistency import score_views
from ..glimpse.resize import resize_to
from ..glimpse.types import Cameras as CamerasValue
from ..glimpse.types import DepthMaps
from .types import Cameras, Depth


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


def _items(x) -> list:
    """A list input as a flat list of chunks ([] when not connected)."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _items(item)]
    return [x]


def _take(x, order: torch.Tensor):
    if x is None:
        return None
    if isinstance(x, DepthMaps):
        return x.select(order)
    if isinstance(x, CamerasValue):
        return select_cameras(x, order.tolist())
    return x[order]


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
                        "the reference). It needs the whole set at once: the chunks LoadViewSet outputs are joined "
                        "(in view-index order). Output: one JSON object, also shown on the node.",
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
            is_input_list=True,
        )

    @classmethod
    def execute(cls, views: list, depth: list | None = None, cameras: list | None = None, mask: list | None = None,
                reference: list | None = None) -> io.NodeOutput:
        view_chunks = _items(views)
        size = tuple(view_chunks[0].shape[1:3])
        for c in view_chunks:
            if tuple(c.shape[1:3]) != size:
                raise ValueError(f"ViewConsistency: view chunks of different sizes {list(c.shape[1:3])} and "
                                 f"{list(size)}")
        all_views = torch.cat(view_chunks)
        n = all_views.shape[0]
        masks = _items(mask)
        refs = _items(reference)
        all_mask = torch.cat([resize_to(m if m.dim() == 3 else m[None], size) for m in masks]) if masks else None
        all_ref = torch.cat([resize_to(r, size) for r in refs]) if refs else None
        all_depth = DepthMaps.cat(_items(depth)) if _items(depth) else None
        try:
            all_cams = cat_cameras(_items(cameras)) if _items(cameras) else None
        except ValueError as e:
            raise ValueError(f"ViewConsistency: {e}") from e
        for what, count in (("mask", None if all_mask is None else all_mask.shape[0]),
                            ("reference", None if all_ref is None else all_ref.shape[0]),
                            ("depth", None if all_depth is None else all_depth.depth.shape[0]),
                            ("cameras", None if all_cams is None else len(all_cams))):
            if count is not None and count != n:
                raise ValueError(f"ViewConsistency: {n} views but {count} in {what}")
        if all_cams is not None and all_cams.view_index is not None:
            order = torch.argsort(all_cams.view_index)
            all_views, all_mask, all_ref, all_depth, all_cams = (
                _take(x, order) for x in (all_views, all_mask, all_ref, all_depth, all_cams))
        scores = score_views(all_views, all_mask, all_depth, all_cams, all_ref)
        if all_cams is not None and all_cams.view_index is not None:  # name views by their index in the set
            index = all_cams.view_index.tolist()
            for entry in scores["per_view"]:
                entry["view"] = index[entry["view"]]
            for pair in scores.get("pairs", []):
                pair["i"], pair["j"] = index[pair["i"]], index[pair["j"]]
        text = json.dumps(scores, allow_nan=False)
        return io.NodeOutput(text, ui=ui.PreviewText(summary_text(scores)))

"""LoadViewSet: a view-set folder (or a SyncDreamer strip) as IMAGE, MASK, GLIMPSE_DEPTH, GLIMPSE_CAMERAS."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import torch

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..glimpse.types import Settings as SettingsValue
from ..glimpse.cameras import select_cameras
from ..glimpse.crossview.anchors import (
    ANCHORS_WHEN_ABSENT,
    DEFAULT_ANCHOR_COUNT,
    anchor_order,
    anchors_first,
    parse_anchors,
)
from ..glimpse.scan import fingerprint, scan_view_set
from ..glimpse.views import select_views, view_name
from ..glimpse.viewset import load_view_set, parse_colour, set_cameras, views_without_alpha, views_without_depth
from .types import Cameras, Depth, Settings

log = logging.getLogger(__name__)


def resolve_path(path: str) -> Path:
    """An absolute path as given; a relative one inside ComfyUI's input folder when it exists there."""
    p = Path(str(path).strip()).expanduser()
    if not p.is_absolute():
        candidate = Path(folder_paths.get_input_directory()) / p
        if candidate.exists():
            return candidate
    return p


class LoadViewSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadViewSet",
            display_name="Load View Set",
            category="Glimpse",
            description="Loads the renders of one 3D reconstruction: a folder with cameras.json, view_XX.png (RGB or "
                        "RGBA) and optional view_XX_depth.npy/npz/exr/png and view_XX_mask.png, or a SyncDreamer strip "
                        "image (N views side by side; its cameras from <name>_cameras.json, else SyncDreamer's 16-view "
                        "orbit). The set is checked before any pixel is read; nothing is ever written to it. Views "
                        "are composited over the background colour and letterboxed to the working resolution (long "
                        "side a multiple of 64, the short side padded with the background colour; the cameras are "
                        "adjusted to match). Outputs are lists of chunks of views: downstream nodes run once per "
                        "chunk.",
            inputs=[
                io.String.Input(
                    "path", default="",
                    tooltip="The view-set folder or strip image: an absolute path, or one relative to ComfyUI's input "
                            "folder."),
                io.String.Input(
                    "views", default="all",
                    tooltip="Which views to output: 'all', or indices and ranges such as '0-3,8'. The depth range of "
                            "the hint is always that of the whole set, so any selection gets the same grey levels."),
                io.String.Input(
                    "background", default="#808080",
                    tooltip="Colour the RGBA views are composited over, and the padding colour: '#rrggbb', 'r,g,b' "
                            "(0..1 or 0..255) or one grey 0..1."),
                io.Int.Input(
                    "resolution", default=1024, min=0, max=8192, step=64,
                    tooltip="Working long side in pixels (a multiple of 64); 0 keeps the native size (padded up to a "
                            "multiple of 64). Ignored when settings are connected."),
                io.Int.Input(
                    "views_per_chunk", default=4, min=1, max=256,
                    tooltip="The views are output as a list of chunks of at most this many views; every downstream "
                            "node runs once per chunk, so memory stays flat for large sets. Ignored when settings "
                            "are connected (their views_per_chunk is used)."),
                io.Int.Input(
                    "strip_views", default=0, min=0, max=256,
                    tooltip="For a strip image: how many views it holds (0 = square views, count from its shape). "
                            "Unused for folders."),
                io.Float.Input(
                    "depth_png_scale", default=0.0, min=0.0, max=1000.0, step=0.0001,
                    tooltip="Scene units per count of 16-bit PNG depth maps; 0 takes 'depth_png_scale' from "
                            "cameras.json. Unused for other depth formats."),
                io.String.Input(
                    "anchors", default="auto", optional=True,
                    tooltip="The set's anchor views for Cross-View Attention: 'auto' (anchor_count views spread over "
                            "the cameras' directions), 'none', or set indices such as '0,4,8,12'. The selected "
                            "anchors come out first, as one chunk of their own (they are sampled together); the "
                            "other views follow in chunks. Connected settings with cross_view off mean none. An API "
                            "prompt without this input (one written before anchors existed) gets 'none'."),
                io.Int.Input(
                    "anchor_count", default=DEFAULT_ANCHOR_COUNT, min=1, max=64, optional=True,
                    tooltip="How many anchors 'auto' picks. More anchors cover more of the object but the anchor "
                            "chunk samples them in one batch (memory grows with it). Ignored when settings are "
                            "connected (their anchor_count is used)."),
                Settings.Input(
                    "settings", optional=True,
                    tooltip="GLIMPSE_SETTINGS from MemoryPreset: when connected, its resolution and views_per_chunk "
                            "are used."),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True,
                                tooltip="The views, composited over the background colour, at the working resolution "
                                        "(a list of chunks)."),
                io.Mask.Output(display_name="mask", is_output_list=True,
                               tooltip="Render opacity (alpha) per view; 0 in the padding (a list of chunks)."),
                Depth.Output(display_name="depth", is_output_list=True,
                             tooltip="Renderer depth (camera-space z, metric) with its validity per view and the whole "
                                     "set's near/far; views without a depth file have no valid pixel (a list of "
                                     "chunks)."),
                Cameras.Output(display_name="cameras", is_output_list=True,
                               tooltip="The views' cameras: intrinsics for the working resolution, poses, azimuth and "
                                       "elevation, and each view's index in the set (a list of chunks)."),
                io.Int.Output(display_name="view_count", tooltip="Number of views output (all chunks together)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, path: str | None = None, views: str | None = None, strip_views: int = 0,
                        depth_png_scale: float = 0.0, background: str | None = None, anchors: str | None = None,
                        anchor_count: int = DEFAULT_ANCHOR_COUNT) -> bool | str:
        if strip_views is not None and strip_views < 0 or depth_png_scale is not None and depth_png_scale < 0:
            return "strip_views and depth_png_scale must not be negative"
        try:
            if background is not None:
                parse_colour(background)
            if path is not None:
                spec = scan_view_set(resolve_path(path), strip_views, depth_png_scale or None)
                if views is not None:
                    select_views(views, len(spec))
                if anchors is not None:
                    parse_anchors(anchors, set_cameras(spec).world_to_camera, anchor_count)
        except (OSError, ValueError) as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, path: str | None = None, strip_views: int = 0, **kwargs) -> str:
        try:
            return fingerprint(resolve_path(path or ""), strip_views=strip_views)
        except (OSError, ValueError) as e:
            return f"invalid: {e}"

    @classmethod
    def execute(cls, path: str, views: str = "all", background: str = "#808080", resolution: int = 1024,
                views_per_chunk: int = 4, strip_views: int = 0, depth_png_scale: float = 0.0,
                anchors: str = ANCHORS_WHEN_ABSENT, anchor_count: int = DEFAULT_ANCHOR_COUNT,
                settings: SettingsValue | None = None) -> io.NodeOutput:
        if settings is not None:
            resolution, views_per_chunk = settings.resolution, settings.views_per_chunk
            anchor_count = settings.anchor_count
            if settings.cross_view == "off":
                anchors = "none"  # no anchor chunk: the preset's chunking as it is
        spec = scan_view_set(resolve_path(path), strip_views, depth_png_scale or None)
        selected = select_views(views, len(spec))
        set_w2c = set_cameras(spec).world_to_camera
        anchor_views = parse_anchors(anchors, set_w2c, anchor_count)
        bar = comfy.utils.ProgressBar(len(selected))

        def on_view(_: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)

        vs = load_view_set(spec, resolution=resolution, background=background, on_view=on_view, views=selected)
        transparent = [selected[k] for k in views_without_alpha(vs.alpha)]
        if transparent:
            log.warning("LoadViewSet: %s fully transparent (alpha 0 everywhere): nothing of %s is enhanced or "
                        "scored", ", ".join(map(view_name, transparent)), "it" if len(transparent) == 1 else "them")
        missing = [selected[k] for k in views_without_depth(vs.depth)]
        if missing and len(missing) < len(selected):
            log.info("LoadViewSet: %s have no depth; DepthControlNet needs images and a depth estimator for them",
                     ", ".join(f"view_{i:02d}" for i in missing))
        position = {v: k for k, v in enumerate(selected)}
        parts = [[position[v] for v in chunk] for chunk in anchors_first(selected, anchor_views, views_per_chunk)]
        log.info("LoadViewSet: %d of %d views from %s, %dx%d -> %dx%d (content %s), %d chunk(s), anchors %s",
                 len(selected), len(spec), spec.root, vs.source_size[1], vs.source_size[0], vs.images.shape[2],
                 vs.images.shape[1], vs.content, len(parts), anchor_views or "none")
        set_key = hashlib.sha256(repr((fingerprint(spec), resolution, background, strip_views,
                                       depth_png_scale)).encode()).hexdigest()[:16]
        order = torch.from_numpy(anchor_order(set_w2c, anchor_views)[selected]) if anchor_views else None
        cameras = replace(vs.cameras, anchors=tuple(anchor_views), anchor_order=order, set_key=set_key)
        return io.NodeOutput(
            [vs.images[c] for c in parts],
            [vs.alpha[c] for c in parts],
            [vs.depth.select(torch.tensor(c)) for c in parts],
            [select_cameras(cameras, c) for c in parts],
            len(selected),
        )

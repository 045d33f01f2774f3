"""LoadViewSet: a view-set folder (or a SyncDreamer strip) as IMAGE, MASK, GLIMPSE_DEPTH, GLIMPSE_CAMERAS."""
from __future__ import annotations

import logging
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..glimpse.types import Settings as SettingsValue
from ..glimpse.viewset import fingerprint, load_view_set, parse_colour, scan_view_set, views_without_depth
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
                        "adjusted to match).",
            inputs=[
                io.String.Input(
                    "path", default="",
                    tooltip="The view-set folder or strip image: an absolute path, or one relative to ComfyUI's input "
                            "folder."),
                io.String.Input(
                    "background", default="#808080",
                    tooltip="Colour the RGBA views are composited over, and the padding colour: '#rrggbb', 'r,g,b' "
                            "(0..1 or 0..255) or one grey 0..1."),
                io.Int.Input(
                    "resolution", default=1024, min=0, max=8192, step=64,
                    tooltip="Working long side in pixels (a multiple of 64); 0 keeps the native size (padded up to a "
                            "multiple of 64). Ignored when settings are connected."),
                io.Int.Input(
                    "strip_views", default=0, min=0, max=256,
                    tooltip="For a strip image: how many views it holds (0 = square views, count from its shape). "
                            "Unused for folders."),
                io.Float.Input(
                    "depth_png_scale", default=0.0, min=0.0, max=1000.0, step=0.0001,
                    tooltip="Scene units per count of 16-bit PNG depth maps; 0 takes 'depth_png_scale' from "
                            "cameras.json. Unused for other depth formats."),
                Settings.Input(
                    "settings", optional=True,
                    tooltip="GLIMPSE_SETTINGS from MemoryPreset: when connected, its resolution is the working "
                            "resolution."),
            ],
            outputs=[
                io.Image.Output(display_name="images",
                                tooltip="The views, composited over the background colour, at the working resolution."),
                io.Mask.Output(display_name="mask", tooltip="Render opacity (alpha) per view; 0 in the padding."),
                Depth.Output(display_name="depth",
                             tooltip="Renderer depth (camera-space z, metric) with its validity per view, and the "
                                     "set's near/far; views without a depth file have no valid pixel."),
                Cameras.Output(display_name="cameras",
                               tooltip="The views' cameras (intrinsics for the working resolution, poses, azimuth and "
                                       "elevation)."),
                io.Int.Output(display_name="view_count", tooltip="Number of views in the set."),
            ],
        )

    @classmethod
    def validate_inputs(cls, path: str | None = None, strip_views: int = 0, depth_png_scale: float = 0.0,
                        background: str | None = None) -> bool | str:
        if strip_views is not None and strip_views < 0 or depth_png_scale is not None and depth_png_scale < 0:
            return "strip_views and depth_png_scale must not be negative"
        try:
            if background is not None:
                parse_colour(background)
            if path is not None:
                scan_view_set(resolve_path(path), strip_views, depth_png_scale or None)
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
    def execute(cls, path: str, background: str = "#808080", resolution: int = 1024, strip_views: int = 0,
                depth_png_scale: float = 0.0, settings: SettingsValue | None = None) -> io.NodeOutput:
        if settings is not None:
            resolution = settings.resolution
        spec = scan_view_set(resolve_path(path), strip_views, depth_png_scale or None)
        bar = comfy.utils.ProgressBar(len(spec))

        def on_view(_: int) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)

        vs = load_view_set(spec, resolution=resolution, background=background, on_view=on_view)
        missing = views_without_depth(vs.depth)
        if missing and len(missing) < len(spec):
            log.info("LoadViewSet: %s have no depth; DepthControlNet needs images and a depth estimator for them",
                     ", ".join(f"view_{i:02d}" for i in missing))
        log.info("LoadViewSet: %d views from %s, %dx%d -> %dx%d (content %s)", len(spec), spec.root,
                 vs.source_size[1], vs.source_size[0], vs.images.shape[2], vs.images.shape[1], vs.content)
        return io.NodeOutput(vs.images, vs.alpha, vs.depth, vs.cameras, len(spec))

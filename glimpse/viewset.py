"""Loading a view set at a working resolution: views composited over a background, alpha, depth, cameras (torch).

:func:`glimpse.scan.scan_view_set` checks the set from its headers first (see :mod:`glimpse.scan` for the layout);
:func:`load_view_set` then decodes, composites and resizes. Nothing here ever writes to the set's folder.

Decisions:

- MASK is the image's alpha. An RGB image takes its alpha from ``view_XX_mask.png`` when there is one, else it is
  fully opaque.
- Depth validity is ``isfinite(z) and z > 0``. NaN/inf and negative values are counted, logged and masked; a view whose
  depth has no valid pixel is loaded as a view without depth (downstream falls back to monocular estimation or raises).
- The working size keeps the aspect ratio: the long side becomes ``resolution`` (a multiple of 64), the short side is
  padded with the background colour up to the next multiple of 64 (content centred). Padded pixels have alpha 0 and
  invalid depth, and the intrinsics are adjusted to match (:func:`glimpse.cameras.letterbox_cameras`).
- Views above 16 Mpx are box-reduced by an integer factor right after decoding (keeping at least twice the working
  size) when the working size is that much smaller, so a huge render loaded for a small working size costs about one
  8-bit copy of it, not a float one.
"""
from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import buffers
from .cameras import cameras_from_file, letterbox_cameras, orbit_cameras, select_cameras
from .depth import near_far_of, sample_stride
from .depth_files import read_depth
from .scan import ViewFiles, ViewSetSpec, scan_view_set
from .types import Cameras, DepthMaps
from .view_images import read_rgba, reduce_factor
from .views import select_views

log = logging.getLogger(__name__)

MULTIPLE = 64
LOAD_THREADS = 4  # views decoded at once (bounded by the CPU count)
_BAND_ROWS = 32  # rows composited at once: 32 rows of a 1024 px view (0.4 MB of float RGB) stay in the L2 cache


@dataclass(frozen=True)
class DepthReport:
    """Per-view depth statistics of a load: pixels by class, before resizing."""

    index: int
    file: str | None
    valid: int
    background: int  # exactly 0
    non_finite: int
    negative: int


@dataclass(frozen=True)
class ViewSet:
    """A loaded view set at the working resolution.

    ``images`` float32 [N,H,W,3] in 0..1 composited over the background colour; ``alpha`` float32 [N,H,W];
    ``depth`` metric z with validity; ``cameras`` for (H, W); ``content`` is (top, left, height, width) of the
    resized views inside the padded canvas; ``source_size`` the native (height, width).
    """

    images: torch.Tensor
    alpha: torch.Tensor
    depth: DepthMaps
    cameras: Cameras
    content: tuple[int, int, int, int]
    source_size: tuple[int, int]
    depth_reports: tuple[DepthReport, ...]
    spec: ViewSetSpec


def set_cameras(spec: ViewSetSpec) -> Cameras:
    """The set's cameras at its native size: its camera file's, else (a strip without one) SyncDreamer's orbit."""
    if spec.cameras is None:
        return orbit_cameras(len(spec), spec.views[0].size)
    return cameras_from_file(spec.cameras)


def working_size(size: tuple[int, int], resolution: int, multiple: int = MULTIPLE
                 ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(resized (h, w), canvas (h, w), offset (top, left)) for a native ``size`` at long side ``resolution``.

    ``resolution`` <= 0 keeps the native scale. The canvas is the resized size rounded up to ``multiple`` on each
    side; the resized image is centred on it.
    """
    h, w = size
    if resolution > 0:
        long_side = max(multiple, int(round(resolution / multiple)) * multiple)
        s = long_side / max(h, w)
        rh, rw = (long_side, max(1, round(w * s))) if h >= w else (max(1, round(h * s)), long_side)
    else:
        rh, rw = h, w
    ch, cw = math.ceil(rh / multiple) * multiple, math.ceil(rw / multiple) * multiple
    return (rh, rw), (ch, cw), ((ch - rh) // 2, (cw - rw) // 2)


def parse_colour(value: str | tuple | list | float) -> tuple[float, float, float]:
    """'#rrggbb', '#rgb', 'r,g,b' (0..1 floats or 0..255 ints), a grey float, or a tuple -> RGB floats in 0..1."""
    if isinstance(value, (int, float)):
        parts = [float(value)]
    elif isinstance(value, (tuple, list)):
        parts = [float(x) for x in value]
    else:
        s = str(value).strip().lower()
        if s.startswith("#") and len(s) in (4, 7) and all(c in "0123456789abcdef" for c in s[1:]):
            digits = s[1:] if len(s) == 7 else "".join(c * 2 for c in s[1:])
            return tuple(int(digits[i:i + 2], 16) / 255.0 for i in (0, 2, 4))
        try:
            parts = [float(x) for x in s.split(",")]
        except ValueError:
            return _fail_colour(value)
        if len(parts) == 3 and any(p > 1 for p in parts) and all(float(p).is_integer() for p in parts):
            parts = [p / 255.0 for p in parts]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or not all(0.0 <= p <= 1.0 for p in parts):
        return _fail_colour(value)
    return tuple(parts)


def _fail_colour(value) -> tuple[float, float, float]:
    raise ValueError(f"background colour {value!r}: expected '#rrggbb', 'r,g,b' (0..1 or 0..255) or a grey 0..1")


def load_view_set(spec_or_path: ViewSetSpec | str | Path, resolution: int = 1024,
                  background: tuple[float, float, float] | str = (0.5, 0.5, 0.5), strip_views: int = 0,
                  depth_png_scale: float | None = None, on_view: Callable[[int], None] | None = None,
                  views: str | Sequence[int] | None = None) -> ViewSet:
    """Load a view set (scanning it first when given a path) at working long side ``resolution`` (<= 0: native).

    ``views`` selects views by index ("all", "0-3,8" or a list; default all): only those are output, in index order,
    and ``cameras.view_index`` holds their indices. The depth range (``depth.near/far``) is always that of the WHOLE
    set, from every view's depth file at native resolution, so any selection or chunk of a set gets the same hint grey
    levels as the full set. ``on_view(i)`` is called after each output view is loaded (progress, interruption).

    RGB is composited over ``background`` (straight alpha), then colour and alpha are resized with antialiasing
    (equivalent to resizing premultiplied colour) and depth with nearest-neighbour sampling of pixel centres (never
    blending foreground and background depth). See the module docstring for padding and validity.
    """
    spec = spec_or_path if isinstance(spec_or_path, ViewSetSpec) else scan_view_set(spec_or_path, strip_views,
                                                                                    depth_png_scale)
    selected = select_views(views, len(spec))
    position = {index: k for k, index in enumerate(selected)}
    bg = torch.tensor(parse_colour(background), dtype=torch.float32)
    bg_np = bg.numpy()
    n = len(selected)
    size = spec.views[0].size
    resized, canvas, offset = working_size(size, resolution)
    top, left = offset
    rows, cols = slice(top, top + resized[0]), slice(left, left + resized[1])
    stride = sample_stride(len(spec) * size[0] * size[1])

    strip = read_rgba(spec.root, what="strip") if spec.kind == "strip" else None
    factor = reduce_factor(size, resized) if strip is None else 1
    padded = canvas != resized
    # huge-page memory (glimpse.buffers); what the views do not cover is background, alpha 0 and invalid depth
    images, alpha = buffers.empty((n, *canvas, 3)), buffers.zeros((n, *canvas))
    depth, valid = buffers.zeros((n, *canvas)), buffers.zeros((n, *canvas), torch.bool)
    if padded:
        images.numpy()[...] = bg_np

    def one(v: ViewFiles) -> tuple[DepthReport | None, torch.Tensor | None]:
        """Read one view into its slot of the outputs (distinct slices: safe from several threads)."""
        k = position.get(v.index)
        d, report = _view_depth(v, spec, size, quiet=k is None)
        sample = None
        if d is not None:
            z = d.reshape(-1)[::stride]
            sample = z[z > 0]
        if k is None:  # not selected: its depth only counts towards the set's range
            return None, sample
        u8 = (_strip_view(v, spec, strip) if strip is not None
              else read_rgba(v.image, v.mask, v.has_alpha, factor, f"{v.name} image"))
        src = u8.shape[:2]  # the native size, or the box-reduced one of a huge view
        if resized == src:
            composite(u8, bg_np, images.numpy()[k, rows, cols], alpha.numpy()[k, rows, cols])
            if d is not None:
                depth.numpy()[k, rows, cols] = d.numpy()
        else:
            x = torch.empty((*src, 4), dtype=torch.float32)
            composite(u8, bg_np, x.numpy()[..., :3], x.numpy()[..., 3])
            x = F.interpolate(x.permute(2, 0, 1).unsqueeze(0), size=resized, mode="bilinear",
                              antialias=resized[0] < src[0], align_corners=False).clamp_(0, 1)[0]
            images[k, rows, cols] = x[:3].permute(1, 2, 0)
            alpha[k, rows, cols] = x[3]
            if d is not None:
                depth[k, rows, cols] = F.interpolate(d[None, None], size=resized, mode="nearest-exact")[0, 0]
        np.greater(depth.numpy()[k], 0, out=valid.numpy()[k])
        return report, sample

    # PNG/zlib decoding and the numpy passes release the GIL: a few threads overlap views on several cores. Grad and
    # inference mode are per thread: the workers get the caller's (ComfyUI runs nodes under inference_mode).
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(v: ViewFiles):
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return one(v)

    reports, samples = [], []
    workers = max(1, min(LOAD_THREADS, os.cpu_count() or 1, len(spec)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run, v): v.index for v in spec.views}
        try:
            for fut in as_completed(futures):
                report, sample = fut.result()
                if sample is not None:
                    samples.append(sample)
                if report is not None:
                    reports.append(report)
                    if on_view is not None:
                        on_view(futures[fut])
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    reports.sort(key=lambda r: r.index)
    valid_z = torch.cat(samples) if samples else torch.zeros(0)
    near, far = near_far_of(valid_z) if valid_z.numel() else (None, None)
    return ViewSet(
        images=images,
        alpha=alpha,
        depth=DepthMaps(depth=depth, valid=valid, near=near, far=far),
        cameras=letterbox_cameras(select_cameras(set_cameras(spec), selected), resized, offset, canvas),
        content=(top, left, resized[0], resized[1]),
        source_size=size,
        depth_reports=tuple(reports),
        spec=spec,
    )


def composite(u8: np.ndarray, bg: np.ndarray, rgb: np.ndarray, alpha: np.ndarray) -> None:
    """8-bit straight-alpha RGBA [H,W,4] over ``bg`` (float32 [3]) into float32 ``rgb`` [H,W,3] and ``alpha`` [H,W]:
    ``alpha = a / 255``, ``rgb = (colour / 255 - bg) * alpha + bg``.

    numpy passes, single-threaded and releasing the GIL (no torch thread-pool stalls on a busy machine), one channel
    at a time: numpy loops over a trailing axis of 3 (broadcasting ``bg`` or alpha) 3-8x slower than over a strided
    row. Where alpha is 0 the formula gives exactly ``bg``, so only the box of nonzero alpha is computed, in bands of
    rows that stay in the CPU's cache through the passes; the rest is filled with ``bg``.
    """
    a8 = u8[..., 3]
    np.multiply(a8, np.float32(1.0 / 255.0), out=alpha)
    rows, cols = np.flatnonzero(a8.any(axis=1)), np.flatnonzero(a8.any(axis=0))
    r0, r1, c0, c1 = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if rows.size else (0, 0, 0, 0)
    for c in range(3):
        value = bg[c]
        for outside in (rgb[:r0, :, c], rgb[r1:, :, c], rgb[r0:r1, :c0, c], rgb[r0:r1, c1:, c]):
            outside.fill(value)
    for top in range(r0, r1, _BAND_ROWS):
        band = slice(top, min(top + _BAND_ROWS, r1))
        a = alpha[band, c0:c1]
        for c in range(3):
            out = rgb[band, c0:c1, c]
            np.copyto(out, u8[band, c0:c1, c], casting="unsafe")
            out *= np.float32(1.0 / 255.0)
            out -= bg[c]
            out *= a
            out += bg[c]


def _strip_view(view: ViewFiles, spec: ViewSetSpec, strip: np.ndarray) -> np.ndarray:
    h, w = view.size
    i = view.index
    return strip[:, i * w:(i + 1) * w] if spec.strip_axis == 1 else strip[i * h:(i + 1) * h]


def _view_depth(v: ViewFiles, spec: ViewSetSpec, size: tuple[int, int],
                quiet: bool = False) -> tuple[torch.Tensor | None, DepthReport]:
    """One view's depth with invalid pixels (NaN/inf, negative) set to 0, and its report (logged unless quiet)."""
    if v.depth is None:
        return None, DepthReport(v.index, None, 0, size[0] * size[1], 0, 0)
    d = torch.from_numpy(read_depth(v.depth, spec.depth_png_scale, f"{v.name} depth"))
    if tuple(d.shape) != tuple(size):
        raise ValueError(f"{v.name} depth is {d.shape[1]}x{d.shape[0]} but its image is {size[1]}x{size[0]} "
                         f"({v.depth.name})")
    # numpy (single-threaded) for these light per-pixel passes: no thread-pool stalls on a busy machine
    z = d.numpy()
    finite = np.isfinite(z)
    non_finite = int(z.size - np.count_nonzero(finite))
    if non_finite:
        z = np.where(finite, z, np.float32(0))
    negative = int(np.count_nonzero(z < 0))
    if negative:
        z = np.maximum(z, np.float32(0))
    valid = int(np.count_nonzero(z > 0))
    zero = z.size - valid - negative
    d = torch.from_numpy(z)
    if (non_finite or negative) and not quiet:
        log.warning("%s depth (%s): %d NaN/inf and %d negative pixels masked as invalid", v.name, v.depth.name,
                    non_finite, negative)
    if valid == 0 and not quiet:
        log.warning("%s depth (%s) has no valid pixel (%d zero, %d NaN/inf, %d negative): loaded as a view without "
                    "depth", v.name, v.depth.name, zero - non_finite, non_finite, negative)
    return d, DepthReport(v.index, v.depth.name, valid, zero - non_finite, non_finite, negative)


def views_without_depth(depth: DepthMaps) -> list[int]:
    """Indices of views with no valid depth pixel."""
    return [i for i in range(depth.valid.shape[0]) if not bool(depth.valid[i].any())]


def views_without_alpha(alpha: torch.Tensor) -> list[int]:
    """Positions of views whose alpha is 0 everywhere (fully transparent: nothing of them is enhanced or scored)."""
    return [i for i in range(alpha.shape[0]) if not bool(alpha[i].any())]

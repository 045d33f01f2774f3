"""View sets on disk: discover and validate a folder (or a SyncDreamer strip), then load it at a working resolution.

A view-set folder holds ``cameras.json`` (schema of ``../shared/data/syncdreamer_cameras.json``), ``view_XX.png``
(RGB or RGBA, straight alpha = render opacity) for XX = 00..N-1, and optionally ``view_XX_depth.npy|npz|exr|png``
(camera-space z in scene units; 0 or non-finite = background) and ``view_XX_mask.png``. A SyncDreamer strip is one
image holding N square views side by side (or stacked); its cameras are ``<stem>_cameras.json`` beside it when present,
otherwise SyncDreamer's 16-camera orbit (:func:`glimpse.cameras.orbit_cameras`).

:func:`scan_view_set` checks everything that can be checked from file headers (and PNG integrity) before any pixel is
decoded; :func:`load_view_set` then decodes, composites and resizes. Nothing here ever writes to the set's folder.

Decisions:

- MASK is the image's alpha. An RGB image takes its alpha from ``view_XX_mask.png`` when there is one, else it is
  fully opaque.
- Depth validity is ``isfinite(z) and z > 0``. NaN/inf and negative values are counted, logged and masked; a view whose
  depth has no valid pixel is loaded as a view without depth (downstream falls back to monocular estimation or raises).
- 16-bit PNG depth needs a scale (scene units per count): an argument, or ``depth_png_scale`` in cameras.json.
- The working size keeps the aspect ratio: the long side becomes ``resolution`` (a multiple of 64), the short side is
  padded with the background colour up to the next multiple of 64 (content centred). Padded pixels have alpha 0 and
  invalid depth, and the intrinsics are adjusted to match (:func:`glimpse.cameras.letterbox_cameras`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .cameras import letterbox_cameras, load_cameras, orbit_cameras, scale_intrinsics, select_cameras
from .depth import near_far_of, sample_stride
from .runner.viewset import parse_selection
from .types import Cameras, DepthMaps

log = logging.getLogger(__name__)

DEPTH_EXTENSIONS = (".npy", ".npz", ".exr", ".png")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
MULTIPLE = 64
LOAD_THREADS = 4  # views decoded at once (bounded by the CPU count)
_VIEW_RE = re.compile(r"^view_(\d+)\.png$", re.IGNORECASE)
_EXR_DEPTH_CHANNELS = ("Z", "depth", "Depth", "D", "Y", "R", "V")


@dataclass(frozen=True)
class ViewFiles:
    """One view's files and what their headers say. ``size`` is (height, width) of the image."""

    index: int
    image: Path
    depth: Path | None
    mask: Path | None
    size: tuple[int, int]
    has_alpha: bool

    @property
    def name(self) -> str:
        return f"view_{self.index:02d}"


@dataclass(frozen=True)
class ViewSetSpec:
    """A validated view set: what :func:`scan_view_set` found, ready for :func:`load_view_set`."""

    root: Path
    kind: str  # "folder" or "strip"
    views: tuple[ViewFiles, ...]
    cameras: Cameras  # K scaled to the images' native size
    cameras_path: Path | None
    depth_png_scale: float | None
    strip_views: int = 0
    strip_axis: int = 1  # 1: side by side, 0: stacked

    def __len__(self) -> int:
        return len(self.views)

    def files(self) -> list[Path]:
        """Every file the set is read from (for fingerprints)."""
        out = [self.root] if self.kind == "strip" else []
        for v in self.views:
            if self.kind == "folder":
                out.append(v.image)
            out += [p for p in (v.depth, v.mask) if p is not None]
        if self.cameras_path is not None:
            out.append(self.cameras_path)
        return out


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


# ---------------------------------------------------------------------------------------------------------- scanning

def _image_header(path: Path, what: str) -> tuple[tuple[int, int], bool, str]:
    """(height, width), has alpha, mode; checks the whole PNG stream (CRCs, truncation) without decoding pixels."""
    try:
        with Image.open(path) as im:
            size, mode = (im.height, im.width), im.mode
            has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            im.verify()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{what}: {path} is not a readable image (truncated or corrupt: {e})") from None
    return size, has_alpha, mode


def _npz_depth_key(path: Path, what: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{what}: {path} is not a readable .npz file ({e})") from None
    if "depth" in keys:
        return "depth"
    if len(keys) == 1:
        return keys[0]
    raise ValueError(f"{what}: {path} has no array named 'depth' (arrays: {keys})")


def _depth_header(path: Path, what: str) -> tuple[int, int]:
    """(height, width) of a depth file without reading its pixels."""
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif ext == ".npz":
            key = _npz_depth_key(path, what)
            with zipfile.ZipFile(path) as z, z.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape = read(f)[0]
        elif ext == ".exr":
            import OpenEXR

            header = OpenEXR.File(str(path), header_only=True).header()
            lo, hi = header["dataWindow"]
            shape = (int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1))
        else:
            size, _, mode = _image_header(path, what)
            if mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise ValueError(f"{what}: {path} is a {mode} PNG; depth PNGs must be 16-bit single-channel "
                                 "(an 8-bit depth map is too coarse)")
            shape = size
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: {path} is not a readable depth file ({e})") from None
    except OSError as e:
        raise ValueError(f"{what}: {path} is not a readable depth file ({e})") from None
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) != 2:
        raise ValueError(f"{what}: {path} holds an array of shape {list(shape)}, expected [height, width]")
    return shape


def _find_one(folder: Path, stem: str, extensions: tuple[str, ...], names: dict[str, Path], what: str) -> Path | None:
    found = [names[(stem + e).lower()] for e in extensions if (stem + e).lower() in names]
    if len(found) > 1:
        raise ValueError(f"{what}: several files for one view in {folder}: {', '.join(p.name for p in found)}; "
                         "keep one")
    return found[0] if found else None


def _check_camera_sizes(cameras: Cameras, size: tuple[int, int], where: str) -> Cameras:
    """Scale K from the cameras' image_size to the actual image size (same aspect ratio required)."""
    ch, cw = cameras.image_size
    h, w = size
    if abs(cw / ch - w / h) > 0.01 * (w / h):
        raise ValueError(f"{where}: the cameras are given for {cw}x{ch} images but the views are {w}x{h} "
                         "(a different aspect ratio; K cannot be scaled to it)")
    if (ch, cw) == (h, w):
        return cameras
    return replace(cameras, intrinsics=scale_intrinsics(cameras.intrinsics, (ch, cw), (h, w)), image_size=(h, w))


def _scan_folder(folder: Path, depth_png_scale: float | None) -> ViewSetSpec:
    entries = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    indices = {}
    for low, p in entries.items():
        m = _VIEW_RE.match(low)
        if m:
            i = int(m.group(1))
            if i in indices:
                raise ValueError(f"{folder}: view index {i} appears twice ({indices[i].name}, {p.name})")
            indices[i] = p
    if not indices:
        raise FileNotFoundError(f"{folder}: no view images (expected view_00.png, view_01.png, ...)")
    n = max(indices) + 1
    missing = [i for i in range(n) if i not in indices]
    if missing:
        names = ", ".join(f"view_{i:02d}.png" for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(f"{folder}: view indices have a gap: {names} missing (found {len(indices)} views, "
                         f"highest view_{n - 1:02d}); views must run view_00..view_{len(indices) - 1:02d}")
    cameras_path = entries.get("cameras.json")
    if cameras_path is None:
        raise FileNotFoundError(f"{folder}: cameras.json is missing (a view set needs the cameras of its {n} views)")
    cameras = load_cameras(cameras_path)
    if len(cameras) != n:
        raise ValueError(f"{cameras_path}: has {len(cameras)} cameras but {folder} has {n} views "
                         f"(view_00..view_{n - 1:02d}); they must match")
    if depth_png_scale is None:
        try:
            raw = json.loads(cameras_path.read_text(encoding="utf-8")).get("depth_png_scale")
        except (OSError, ValueError, AttributeError):
            raw = None
        depth_png_scale = float(raw) if isinstance(raw, (int, float)) and raw > 0 else None

    views = []
    size0 = None
    for i in range(n):
        name = f"view_{i:02d}"
        image = indices[i]
        size, has_alpha, _ = _image_header(image, f"{name} image")
        if size0 is None:
            size0 = size
        elif size != size0:
            raise ValueError(f"{name}: {image.name} is {size[1]}x{size[0]} but view_00 is {size0[1]}x{size0[0]}; "
                             "all views of a set must have one size")
        depth = _find_one(folder, f"{name}_depth", DEPTH_EXTENSIONS, entries, f"{name} depth")
        if depth is not None:
            dsize = _depth_header(depth, f"{name} depth")
            if dsize != size:
                raise ValueError(f"{name} depth is {dsize[1]}x{dsize[0]} but its image is {size[1]}x{size[0]} "
                                 f"({depth.name} vs {image.name})")
            if depth.suffix.lower() == ".png" and depth_png_scale is None:
                raise ValueError(f"{name} depth: {depth} is a 16-bit PNG, which needs a stated scale (scene units "
                                 "per count): set depth_png_scale, or 'depth_png_scale' in cameras.json")
        mask = entries.get(f"{name}_mask.png")
        if mask is not None:
            msize, _, _ = _image_header(mask, f"{name} mask")
            if msize != size:
                raise ValueError(f"{name} mask is {msize[1]}x{msize[0]} but its image is {size[1]}x{size[0]} "
                                 f"({mask.name} vs {image.name})")
        views.append(ViewFiles(i, image, depth, mask, size, has_alpha))
    cameras = _check_camera_sizes(cameras, size0, str(cameras_path))
    return ViewSetSpec(folder, "folder", tuple(views), cameras, cameras_path, depth_png_scale)


def _scan_strip(path: Path, strip_views: int) -> ViewSetSpec:
    (h, w), has_alpha, _ = _image_header(path, "strip")
    if strip_views <= 0:
        if w >= h and w % h == 0:
            strip_views = w // h
        elif h > w and h % w == 0:
            strip_views = h // w
        else:
            raise ValueError(f"strip: {path} is {w}x{h}, not a row or column of square views; give the view count")
    axis = 1 if w % strip_views == 0 and (w // strip_views <= h or h % strip_views != 0) else 0
    if (w if axis == 1 else h) % strip_views:
        raise ValueError(f"strip: {path} is {w}x{h}, which does not split into {strip_views} equal views")
    size = (h, w // strip_views) if axis == 1 else (h // strip_views, w)
    cameras_path = next((p for p in (path.with_name(path.stem + "_cameras.json"),
                                     path.with_name(path.stem + ".cameras.json")) if p.is_file()), None)
    if cameras_path is not None:
        cameras = load_cameras(cameras_path)
        if len(cameras) != strip_views:
            raise ValueError(f"{cameras_path}: has {len(cameras)} cameras but the strip {path.name} is split into "
                             f"{strip_views} views; they must match")
        cameras = _check_camera_sizes(cameras, size, str(cameras_path))
    else:
        cameras = orbit_cameras(strip_views, size)
    views = tuple(ViewFiles(i, path, None, None, size, has_alpha) for i in range(strip_views))
    return ViewSetSpec(path, "strip", views, cameras, cameras_path, None, strip_views, axis)


def scan_view_set(path: str | Path, strip_views: int = 0, depth_png_scale: float | None = None) -> ViewSetSpec:
    """Find and validate a view set (folder, or strip image split into ``strip_views``; 0 = infer from its shape).

    Reads headers only (and checks PNG streams for truncation); raises FileNotFoundError / ValueError naming the file
    and the view on: a path that does not exist, no views, gaps in view indices, missing cameras.json, camera and
    view counts that differ, images of different sizes, depth or mask sizes that differ from their image, a depth file
    of an unknown layout, a 16-bit PNG depth without a scale, an unreadable or truncated file.
    """
    if path is None or not str(path).strip():
        raise ValueError("view set path is empty")
    p = Path(str(path).strip()).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: the view set path does not exist")
    if p.is_dir():
        return _scan_folder(p, depth_png_scale if depth_png_scale and depth_png_scale > 0 else None)
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"{p}: not a view-set folder nor a strip image ({', '.join(IMAGE_EXTENSIONS)})")
    return _scan_strip(p, strip_views)


def fingerprint(spec_or_path: ViewSetSpec | str | Path, hash_contents: bool = False, strip_views: int = 0) -> str:
    """A digest that changes when any file of the set changes (name, size, mtime; or full contents when asked)."""
    spec = spec_or_path if isinstance(spec_or_path, ViewSetSpec) else scan_view_set(spec_or_path, strip_views)
    h = hashlib.sha256()
    for f in spec.files():
        st = f.stat()
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if hash_contents:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------- loading

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


def _read_depth(path: Path, scale: float | None) -> np.ndarray:
    ext = path.suffix.lower()
    if ext == ".npy":
        d = np.load(path, allow_pickle=False)
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            d = z[_npz_depth_key(path, "depth")]
    elif ext == ".exr":
        import OpenEXR

        with OpenEXR.File(str(path), separate_channels=True) as f:
            channels = f.channels()
            name = next((c for c in _EXR_DEPTH_CHANNELS if c in channels), None)
            if name is None:
                if len(channels) != 1:
                    raise ValueError(f"{path}: no depth channel among {sorted(channels)} "
                                     f"(looked for {', '.join(_EXR_DEPTH_CHANNELS)})")
                name = next(iter(channels))
            d = np.asarray(channels[name].pixels)
    else:
        with Image.open(path) as im:
            d = np.asarray(im).astype(np.float32) * float(scale)
    d = np.asarray(d)
    if d.ndim == 3:
        d = d[..., 0]
    if not np.issubdtype(d.dtype, np.number):
        raise ValueError(f"{path}: depth has dtype {d.dtype}, expected numbers")
    return d.astype(np.float32, copy=False)


def _load_rgba(view: ViewFiles, spec: ViewSetSpec, strip: np.ndarray | None) -> np.ndarray:
    """uint8 [H,W,4] of one view (alpha from the image, else its mask file, else opaque)."""
    if strip is not None:
        h, w = view.size
        i = view.index
        return strip[:, i * w:(i + 1) * w] if spec.strip_axis == 1 else strip[i * h:(i + 1) * h]
    with Image.open(view.image) as im:
        im.load()
        rgba = np.asarray(im.convert("RGBA") if view.has_alpha else im.convert("RGB"))
    if rgba.shape[2] == 4:
        return rgba
    if view.mask is not None:
        with Image.open(view.mask) as m:
            a = np.asarray(m.convert("L"))
    else:
        a = np.full(rgba.shape[:2], 255, np.uint8)
    return np.concatenate([rgba, a[..., None]], axis=-1)


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

    strip = None
    if spec.kind == "strip":
        with Image.open(spec.root) as im:
            im.load()
            strip = np.asarray(im.convert("RGBA"))
    padded = canvas != resized
    images = bg.view(1, 1, 1, 3).repeat(n, *canvas, 1) if padded else torch.empty((n, *canvas, 3))
    alpha = torch.zeros((n, *canvas), dtype=torch.float32) if padded else torch.empty((n, *canvas))
    depth = torch.zeros((n, *canvas), dtype=torch.float32)

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
        u8 = _load_rgba(v, spec, strip)
        a = u8[..., 3:4].astype(np.float32)
        a *= np.float32(1.0 / 255.0)
        # straight alpha over bg, in place in numpy (single-threaded passes that release the GIL; no torch
        # thread-pool stalls on a busy machine): rgb = bg + a * (colour - bg)
        rgb_t = images[k, rows, cols] if resized == size else torch.empty((*size, 3), dtype=torch.float32)
        rgb = rgb_t.numpy()
        rgb[...] = u8[..., :3]
        rgb *= np.float32(1.0 / 255.0)
        rgb -= bg_np
        rgb *= a
        rgb += bg_np
        if resized == size:
            alpha.numpy()[k, rows, cols] = a[..., 0]
            if d is not None:
                depth.numpy()[k, rows, cols] = d.numpy()
            return report, sample
        x = torch.cat([rgb_t, torch.from_numpy(a)], dim=-1).permute(2, 0, 1).unsqueeze(0)
        x = F.interpolate(x, size=resized, mode="bilinear", antialias=resized[0] < size[0],
                          align_corners=False).clamp_(0, 1)[0]
        images[k, rows, cols] = x[:3].permute(1, 2, 0)
        alpha[k, rows, cols] = x[3]
        if d is not None:
            depth[k, rows, cols] = F.interpolate(d[None, None], size=resized, mode="nearest-exact")[0, 0]
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
        depth=DepthMaps(depth=depth, valid=torch.from_numpy(depth.numpy() > 0), near=near, far=far),
        cameras=letterbox_cameras(select_cameras(spec.cameras, selected), resized, offset, canvas),
        content=(top, left, resized[0], resized[1]),
        source_size=size,
        depth_reports=tuple(reports),
        spec=spec,
    )


def select_views(views: str | Sequence[int] | None, count: int) -> list[int]:
    """'all' / None / '0-3,8' / a list of indices -> sorted unique view indices of a set of ``count`` views."""
    if views is None or isinstance(views, str):
        try:
            return parse_selection(views or "all", count)
        except ValueError as e:
            raise ValueError(f"views: {e} (the set has {count} views)") from None
    out = sorted({int(i) for i in views})
    bad = [i for i in out if not 0 <= i < count]
    if bad or not out:
        raise ValueError(f"views: {bad or 'empty selection'} outside 0-{count - 1}")
    return out


def chunks(count: int, size: int) -> list[slice]:
    """Slices cutting ``count`` views into chunks of at most ``size`` (``size`` < 1: one chunk)."""
    size = count if size < 1 else size
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def _view_depth(v: ViewFiles, spec: ViewSetSpec, size: tuple[int, int],
                quiet: bool = False) -> tuple[torch.Tensor | None, DepthReport]:
    """One view's depth with invalid pixels (NaN/inf, negative) set to 0, and its report (logged unless quiet)."""
    if v.depth is None:
        return None, DepthReport(v.index, None, 0, size[0] * size[1], 0, 0)
    try:
        d = torch.from_numpy(_read_depth(v.depth, spec.depth_png_scale))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{v.name} depth: {v.depth} could not be read ({e})") from None
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

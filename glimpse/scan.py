"""Finding and checking a view set on disk from file headers alone (numpy and Pillow; no torch, no pixel kept).

A view-set folder holds ``cameras.json`` (see :mod:`glimpse.camera_file`), ``view_XX.png`` (RGB or RGBA, straight
alpha = render opacity) for XX = 00..N-1, and optionally ``view_XX_depth.npy|npz|exr|png`` (camera-space z in scene
units; 0 or non-finite = background) and ``view_XX_mask.png``. A SyncDreamer strip is one image holding N square
views side by side (or stacked); its cameras are ``<stem>_cameras.json`` beside it when present, otherwise
SyncDreamer's 16-camera orbit.

:func:`scan_view_set` checks everything that can be checked from headers (and PNG integrity) before any pixel is
decoded: it is what LoadViewSet validates with and what ``glimpse-enhance run`` checks each set with before any
server starts. The files it accepts (:meth:`ViewSetSpec.files`) are the set: nothing else is read or uploaded.
Nothing here writes to the set's folder. 16-bit PNG depth needs a scale: an argument, or ``depth_png_scale`` in
cameras.json.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .camera_file import CameraFile, read_camera_file
from .depth_files import DEPTH_EXTENSIONS, depth_header
from .files import files_digest
from .view_images import alpha_is_empty, image_header, read_rgba
from .views import view_indices, view_name

STRIP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_GAP_NAMES = 8  # missing views named in a gap message


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
        return view_name(self.index)


@dataclass(frozen=True)
class ViewSetSpec:
    """A validated view set: what :func:`scan_view_set` found, ready for :func:`glimpse.viewset.load_view_set`.

    ``cameras`` is the camera file's content with K for the images' native size, or None for a strip without a
    camera file (SyncDreamer's orbit is used).
    """

    root: Path
    kind: str  # "folder" or "strip"
    views: tuple[ViewFiles, ...]
    cameras: CameraFile | None
    cameras_path: Path | None
    depth_png_scale: float | None
    strip_views: int = 0
    strip_axis: int = 1  # 1: side by side, 0: stacked

    def __len__(self) -> int:
        return len(self.views)

    def files(self) -> list[Path]:
        """Every file the set is read from, each once: its views, depth, masks and camera file."""
        out = [self.root] if self.kind == "strip" else []
        for v in self.views:
            if self.kind == "folder":
                out.append(v.image)
            out += [p for p in (v.depth, v.mask) if p is not None]
        if self.cameras_path is not None:
            out.append(self.cameras_path)
        return out


def _find_one(folder: Path, stem: str, extensions: tuple[str, ...], names: dict[str, Path], what: str) -> Path | None:
    found = [names[(stem + e).lower()] for e in extensions if (stem + e).lower() in names]
    if len(found) > 1:
        raise ValueError(f"{what}: several files for one view in {folder}: {', '.join(p.name for p in found)}; "
                         "keep one")
    return found[0] if found else None


def _fit_cameras(cameras: CameraFile, size: tuple[int, int], where: str) -> CameraFile:
    """K scaled from the cameras' image_size to the actual image size (same aspect ratio required)."""
    ch, cw = cameras.image_size
    h, w = size
    if abs(cw / ch - w / h) > 0.01 * (w / h):
        raise ValueError(f"{where}: the cameras are given for {cw}x{ch} images but the views are {w}x{h} "
                         "(a different aspect ratio; K cannot be scaled to it)")
    return cameras.resized(size)


def _entries(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_file()}


def _view_images(folder: Path, entries: dict[str, Path]) -> dict[int, Path]:
    """{index: image} of the folder's views, which must run view_00..view_{N-1} without gaps."""
    try:
        indices = {i: entries[name] for i, name in view_indices(list(entries)).items()}
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None
    if not indices:
        raise FileNotFoundError(f"{folder}: no view images (expected view_00.png, view_01.png, ...)")
    n = len(indices)
    if max(indices) != n - 1:  # never enumerate up to an index taken from a file name (view_9999999999.png)
        missing = [i for i in range(n) if i not in indices]
        names = ", ".join(f"{view_name(i)}.png" for i in missing[:_GAP_NAMES]) + \
            (" ..." if len(missing) > _GAP_NAMES else "")
        raise ValueError(f"{folder}: view indices have a gap: {names} missing (found {n} views, highest "
                         f"{indices[max(indices)].name}); views must run view_00..{view_name(n - 1)}")
    return indices


def _check_contained(folder: Path, entries: dict[str, Path], images: dict[int, Path], with_depth: bool) -> None:
    """Refuse, naming them, the files the set would be read from that are links leading out of its folder (before
    anything is read from them): a set handed to the runner is uploaded, and must not carry other files along."""
    names = {f"{view_name(i)}_mask.png" for i in images}
    if with_depth:
        names |= {"cameras.json"} | {f"{view_name(i)}_depth{e}" for i in images for e in DEPTH_EXTENSIONS}
    real = folder.resolve()
    outside = []
    for p in [*images.values(), *(entries[n] for n in sorted(names) if n in entries)]:
        target = Path(os.path.realpath(p))
        if real not in target.parents:
            outside.append(f"{p.name} -> {target}")
    if outside:
        raise ValueError(f"{folder}: {len(outside)} file(s) of the set are links leading out of its folder, never read "
                         f"nor uploaded: {'; '.join(outside)}; copy the files into the set instead")


def _image_views(folder: Path, images: dict[int, Path], entries: dict[str, Path], depth_png_scale: float | None,
                 with_depth: bool) -> list[ViewFiles]:
    views, size0 = [], None
    for i in range(len(images)):
        name, image = view_name(i), images[i]
        size, has_alpha, _ = image_header(image, f"{name} image")
        if size0 is None:
            size0 = size
        elif size != size0:
            raise ValueError(f"{name}: {image.name} is {size[1]}x{size[0]} but view_00 is {size0[1]}x{size0[0]}; "
                             "all views of a set must have one size")
        depth = _find_one(folder, f"{name}_depth", DEPTH_EXTENSIONS, entries, f"{name} depth") if with_depth else None
        if depth is not None:
            dsize = depth_header(depth, f"{name} depth")
            if dsize != size:
                raise ValueError(f"{name} depth is {dsize[1]}x{dsize[0]} but its image is {size[1]}x{size[0]} "
                                 f"({depth.name} vs {image.name})")
            if depth.suffix.lower() == ".png" and depth_png_scale is None:
                raise ValueError(f"{name} depth: {depth} is a 16-bit PNG, which needs a stated scale (scene units "
                                 "per count): set depth_png_scale, or 'depth_png_scale' in cameras.json")
        mask = entries.get(f"{name}_mask.png")
        if mask is not None:
            msize, _, _ = image_header(mask, f"{name} mask")
            if msize != size:
                raise ValueError(f"{name} mask is {msize[1]}x{msize[0]} but its image is {size[1]}x{size[0]} "
                                 f"({mask.name} vs {image.name})")
        views.append(ViewFiles(i, image, depth, mask, size, has_alpha))
    return views


def _png_scale(cameras_path: Path) -> float | None:
    try:
        raw = json.loads(cameras_path.read_text(encoding="utf-8")).get("depth_png_scale")
    except (OSError, ValueError, AttributeError):
        raw = None
    return float(raw) if isinstance(raw, (int, float)) and raw > 0 else None


def _scan_folder(folder: Path, depth_png_scale: float | None, contained: bool) -> ViewSetSpec:
    entries = _entries(folder)
    images = _view_images(folder, entries)
    if contained:
        _check_contained(folder, entries, images, with_depth=True)
    n = len(images)
    cameras_path = entries.get("cameras.json")
    if cameras_path is None:
        raise FileNotFoundError(f"{folder}: cameras.json is missing (a view set needs the cameras of its {n} views)")
    cameras = read_camera_file(cameras_path)
    if len(cameras) != n:
        raise ValueError(f"{cameras_path}: has {len(cameras)} cameras but {folder} has {n} views "
                         f"(view_00..{view_name(n - 1)}); they must match")
    if depth_png_scale is None:
        depth_png_scale = _png_scale(cameras_path)
    views = _image_views(folder, images, entries, depth_png_scale, with_depth=True)
    cameras = _fit_cameras(cameras, views[0].size, str(cameras_path))
    return ViewSetSpec(folder, "folder", tuple(views), cameras, cameras_path, depth_png_scale)


def scan_images(folder: str | Path, contained: bool = False) -> ViewSetSpec:
    """The view images of a folder and their masks (view_00.png .. view_{N-1}.png, one size): for image workflows,
    which need neither cameras nor depth. Same header checks as :func:`scan_view_set`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    entries = _entries(folder)
    images = _view_images(folder, entries)
    if contained:
        _check_contained(folder, entries, images, with_depth=False)
    views = _image_views(folder, images, entries, None, with_depth=False)
    return ViewSetSpec(folder, "folder", tuple(views), None, None, None)


def _scan_strip(path: Path, strip_views: int) -> ViewSetSpec:
    (h, w), has_alpha, _ = image_header(path, "strip")
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
    cameras = None
    if cameras_path is not None:
        cameras = read_camera_file(cameras_path)
        if len(cameras) != strip_views:
            raise ValueError(f"{cameras_path}: has {len(cameras)} cameras but the strip {path.name} is split into "
                             f"{strip_views} views; they must match")
        cameras = _fit_cameras(cameras, size, str(cameras_path))
    views = tuple(ViewFiles(i, path, None, None, size, has_alpha) for i in range(strip_views))
    return ViewSetSpec(path, "strip", views, cameras, cameras_path, None, strip_views, axis)


def scan_view_set(path: str | Path, strip_views: int = 0, depth_png_scale: float | None = None,
                  contained: bool = False) -> ViewSetSpec:
    """Find and validate a view set (folder, or strip image split into ``strip_views``; 0 = infer from its shape).

    Reads headers only (and checks PNG streams for truncation); raises FileNotFoundError / ValueError naming the file
    and the view on: a path that does not exist, no views, gaps in view indices, missing cameras.json, camera and
    view counts that differ, images of different sizes or above the pixel limit, depth or mask sizes that differ
    from their image, a depth file of an unknown layout or of non-real values, a 16-bit PNG depth without a scale, an
    unreadable or truncated file; with ``contained``, on files of a folder set that are links leading out of it.
    """
    if path is None or not str(path).strip():
        raise ValueError("view set path is empty")
    p = Path(str(path).strip()).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: the view set path does not exist")
    if p.is_dir():
        return _scan_folder(p, depth_png_scale if depth_png_scale and depth_png_scale > 0 else None, contained)
    if p.suffix.lower() not in STRIP_EXTENSIONS:
        raise ValueError(f"{p}: not a view-set folder nor a strip image ({', '.join(STRIP_EXTENSIONS)})")
    return _scan_strip(p, strip_views)


def fingerprint(spec_or_path: ViewSetSpec | str | Path, hash_contents: bool = False, strip_views: int = 0) -> str:
    """A digest that changes when any file of the set changes (name, size, mtime; or full contents when asked)."""
    spec = spec_or_path if isinstance(spec_or_path, ViewSetSpec) else scan_view_set(spec_or_path, strip_views)
    return files_digest(spec.files(), contents=hash_contents)


def transparent_views(spec: ViewSetSpec, threads: int = 4) -> list[int]:
    """Indices of the views whose alpha is 0 everywhere. Decodes each view's alpha (a strip once), so it also finds
    pixel data that does not decode: ValueError naming the file."""
    if spec.kind == "strip":
        a = read_rgba(spec.root, what="strip")[..., 3]
        h, w = spec.views[0].size
        parts = [a[:, i * w:(i + 1) * w] if spec.strip_axis == 1 else a[i * h:(i + 1) * h] for i in range(len(spec))]
        return [i for i, part in enumerate(parts) if not part.any()]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, os.cpu_count() or 1))) as pool:  # zlib frees the GIL
        empty = pool.map(lambda v: alpha_is_empty(v.image, v.mask, v.has_alpha, f"{v.name} image"), spec.views)
        return [v.index for v, e in zip(spec.views, empty) if e]

"""Depth files of a view set (``view_XX_depth.npy|npz|exr|png``): their shape from the header, and their values.

Depth is camera-space z in scene units as real numbers (float or integer arrays; complex, boolean and object arrays
are refused); a 16-bit single-channel PNG needs a scale (scene units per count). Errors name the file and the view.
numpy and Pillow only; OpenEXR is imported when an .exr file is met.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEPTH_EXTENSIONS = (".npy", ".npz", ".exr", ".png")
EXR_DEPTH_CHANNELS = ("Z", "depth", "Depth", "D", "Y", "R", "V")
DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def npz_depth_key(path: Path, what: str) -> str:
    """The array of an .npz that holds the depth: 'depth', else its only array."""
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


def check_real(dtype: np.dtype, path: Path, what: str) -> None:
    """Refuse depth values that are not real numbers (a complex array would silently lose its imaginary part)."""
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise ValueError(f"{what}: {path} holds {dtype} values; depth must be real numbers (float or integer)")


def _open_exr(path: Path, **kw):
    import OpenEXR

    try:
        return OpenEXR.File(str(path), **kw)
    except RuntimeError as e:  # OpenEXR reports a corrupt or truncated header as RuntimeError
        raise ValueError(str(e)) from None


def _png_header(path: Path, what: str) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            size, mode = (im.height, im.width), im.mode
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{what}: {path} is not a readable image (truncated or corrupt: {e})") from None
    if mode not in DEPTH_PNG_MODES:
        raise ValueError(f"{what}: {path} is a {mode} PNG; depth PNGs must be 16-bit single-channel "
                         "(an 8-bit depth map is too coarse)")
    return size


def depth_header(path: Path, what: str) -> tuple[int, int]:
    """(height, width) of a depth file from its header (and its value type checked), without reading its pixels."""
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            check_real(arr.dtype, path, what)
            shape = arr.shape
        elif ext == ".npz":
            key = npz_depth_key(path, what)
            with zipfile.ZipFile(path) as z, z.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
            check_real(dtype, path, what)
        elif ext == ".exr":
            lo, hi = _open_exr(path, header_only=True).header()["dataWindow"]
            shape = (int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1))
        else:
            shape = _png_header(path, what)
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: {path} is not a readable depth file ({e})") from None
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what}: {path} is not a readable depth file ({e})") from None
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[2] == 1:
        shape = shape[:2]
    if len(shape) != 2:
        raise ValueError(f"{what}: {path} holds an array of shape {list(shape)}, expected [height, width]")
    return shape


def _read(path: Path, scale: float | None, what: str) -> np.ndarray:
    ext = path.suffix.lower()
    if ext == ".npy":
        return np.load(path, allow_pickle=False)
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return z[npz_depth_key(path, what)]
    if ext == ".exr":
        with _open_exr(path, separate_channels=True) as f:
            channels = f.channels()
            name = next((c for c in EXR_DEPTH_CHANNELS if c in channels), None)
            if name is None:
                if len(channels) != 1:
                    raise ValueError(f"no depth channel among {sorted(channels)} "
                                     f"(looked for {', '.join(EXR_DEPTH_CHANNELS)})")
                name = next(iter(channels))
            return np.asarray(channels[name].pixels)
    with Image.open(path) as im:
        return np.asarray(im).astype(np.float32) * float(scale)


def read_depth(path: Path, scale: float | None, what: str = "depth") -> np.ndarray:
    """float32 [H,W] depth of one file (``scale``: scene units per count of a 16-bit PNG); ValueError naming the
    file when it cannot be read or holds no real numbers."""
    try:
        d = np.asarray(_read(path, scale, what))
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: {path} could not be read ({e})") from None
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{what}: {path} could not be read ({e})") from None
    if d.ndim == 3:
        d = d[..., 0]
    check_real(d.dtype, path, what)
    return d.astype(np.float32, copy=False)

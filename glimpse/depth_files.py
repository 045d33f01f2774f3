"""Depth files of a view set (``view_XX_depth.npy|npz|exr|png``): their shape from the header, and their values.

Depth is camera-space z in scene units as real numbers (float or integer arrays; complex, boolean and object arrays
are refused); a 16-bit single-channel PNG needs a scale (scene units per count). Errors name the file and the view.
numpy and Pillow only; OpenEXR is imported when an .exr file is met. A compressed .npz member is inflated with
zlib-ng when it is installed (requirements.txt lists it): a renderer's depth is mostly zeros, which zlib-ng inflates
about ten times faster than the standard library's zlib (7.7 ms against 0.8 for a 1024 px map), and loading a 16-view
set inflates 16 of them.
"""
from __future__ import annotations

import io
import struct
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    from zlib_ng import zlib_ng as zlib
except ImportError:  # a platform without its wheel: the standard library's, same interface
    import zlib

DEPTH_EXTENSIONS = (".npy", ".npz", ".exr", ".png")
EXR_DEPTH_CHANNELS = ("Z", "depth", "Depth", "D", "Y", "R", "V")
DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


@contextmanager
def _open_npz(path: Path, what: str):
    """The .npz as an open ZipFile; ValueError naming the file when it is not a readable zip archive."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{what}: {path} is not a readable .npz file ({e})") from None
    with z:
        yield z


def npz_depth_key(z: zipfile.ZipFile, path: Path, what: str) -> str:
    """The array of the open .npz ``z`` (at ``path``) that holds the depth: 'depth', else its only array."""
    keys = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
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
            with _open_npz(path, what) as z, z.open(npz_depth_key(z, path, what) + ".npy") as f:
                shape, _, dtype = _npy_header(f)
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
        return _read_npz_depth(path, what)
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


def _npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of the .npy stream ``f``, which is left at the first byte of the data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _read_npz_depth(path: Path, what: str) -> np.ndarray:
    """The depth array of an .npz (:func:`npz_depth_key`): a deflated member is inflated in one call and checked
    against its CRC (what zipfile would do in 256 KiB steps with the standard library's zlib); a stored one is read
    by numpy."""
    with _open_npz(path, what) as z:
        name = npz_depth_key(z, path, what) + ".npy"
        info = z.getinfo(name)
        if info.compress_type != zipfile.ZIP_DEFLATED:
            with z.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise ValueError(f"member {name} has no local header")
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_length + extra_length)
        data = zlib.decompress(f.read(info.compress_size), -15)
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        raise ValueError(f"member {name} fails its CRC check (corrupt)")
    buffer = io.BytesIO(data)
    shape, fortran, dtype = _npy_header(buffer)
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects, which are never loaded")
    count = int(np.prod(shape, dtype=np.int64))
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buffer.tell())
    return array.reshape(shape, order="F" if fortran else "C").copy()  # writable, as np.load's


def read_depth(path: Path, scale: float | None, what: str = "depth") -> np.ndarray:
    """float32 [H,W] depth of one file (``scale``: scene units per count of a 16-bit PNG); ValueError naming the
    file when it cannot be read or holds no real numbers."""
    try:
        d = np.asarray(_read(path, scale, what))
    except ValueError as e:
        if str(e).startswith(what):
            raise
        raise ValueError(f"{what}: {path} could not be read ({e})") from None
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{what}: {path} could not be read ({e})") from None
    if d.ndim == 3:
        d = d[..., 0]
    check_real(d.dtype, path, what)
    return d.astype(np.float32, copy=False)

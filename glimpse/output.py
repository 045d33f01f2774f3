"""Writing results safely: atomic files, folder names that stay inside the output root, manifests.

- :func:`atomic_write_bytes` writes to a temporary name in the destination folder, fsyncs, then ``os.replace``\\ s:
  a reader sees the old file or the whole new one, and a failure (full disk, unwritable folder) removes the
  temporary file and raises an ``OSError`` whose message names the destination.
- :func:`resolve_subfolder` refuses absolute paths and ``..`` and anything that resolves (through symlinks) outside
  the root.
- :func:`claim_folder`: existing results are never overwritten silently. ``policy="suffix"`` (the default) picks the
  first free ``name_001``, ``name_002``...; ``policy="refuse"`` raises ``FileExistsError``. A folder counts as
  holding results when it has a ``manifest.json`` or any ``view_XX.png``; an empty or unrelated folder is used.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

_RESULT_RE = re.compile(r"^(manifest\.json|view_\d+\.png)$", re.IGNORECASE)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    folder = path.parent
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise OSError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def png_bytes(array: np.ndarray, text: dict[str, str] | None = None, compress_level: int = 4) -> bytes:
    """Encode an 8-bit HxW (L), HxWx3 (RGB) or HxWx4 (RGBA) array as PNG with optional text chunks."""
    info = None
    if text:
        info = PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", pnginfo=info, compress_level=compress_level)
    return buf.getvalue()


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Float 0..1 tensor -> uint8 array (rounded, clipped)."""
    return (image.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def resolve_subfolder(root: str | Path, name: str) -> Path:
    """``root / name`` for a relative ``name`` that stays inside ``root``; '' is the root itself.

    Raises ValueError for absolute paths, drive letters, ``..`` components and paths that resolve outside ``root``
    (e.g. through a symlink).
    """
    root = Path(root).resolve()
    name = (name or "").strip()
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or Path(name).is_absolute():
        raise ValueError(f"subfolder {name!r} is an absolute path; give a folder name inside the output folder")
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise ValueError(f"subfolder {name!r} contains '..'; give a folder name inside the output folder")
    target = root.joinpath(*parts).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"subfolder {name!r} resolves to {target}, outside the output folder {root}")
    return target


def holds_results(folder: Path) -> bool:
    return folder.is_dir() and any(_RESULT_RE.match(p.name) for p in folder.iterdir())


def claim_folder(root: str | Path, name: str, policy: str = "suffix") -> Path:
    """Create and return the folder to write a result set into (see the module docstring for ``policy``)."""
    if policy not in ("suffix", "refuse"):
        raise ValueError(f"unknown overwrite policy {policy!r}; expected 'suffix' or 'refuse'")
    target = resolve_subfolder(root, name)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if holds_results(target):
        if policy == "refuse":
            raise FileExistsError(f"{target} already holds results (manifest.json / view_XX.png); choose another "
                                  f"subfolder or remove it")
        if target == Path(root).resolve():
            raise FileExistsError(f"the output folder {target} itself holds results; give a subfolder name")
        for k in range(1, 10000):
            candidate = target.with_name(f"{target.name}_{k:03d}")
            if not holds_results(candidate) and not (candidate.exists() and not candidate.is_dir()):
                target = candidate
                break
        else:
            raise FileExistsError(f"no free name after {target.name}_9999")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the output folder {target}: {e.strerror or e}") from None
    return target


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values (CPU, contiguous)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

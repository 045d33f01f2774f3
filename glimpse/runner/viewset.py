"""A view set folder as the runner sees it: which files travel to the server, its content hash, its views, chunks.

The runner does not decode images (LoadViewSet on the server validates them and reports problems by file and view);
it only needs the file list, how many views there are and a stable hash of the content.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

# Top-level files of a view set that are uploaded; sub-folders (e.g. the sample set's clean/) stay behind.
UPLOAD_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".npz", ".npy", ".exr", ".json"}
VIEW_RE = re.compile(r"^view_(\d+)\.(png|jpg|jpeg|webp)$", re.IGNORECASE)


class ViewSetError(ValueError):
    """A folder that is not a view set."""


def viewset_files(folder: Path) -> list[Path]:
    """The files of a view set that the server needs, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ViewSetError(f"view set folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in UPLOAD_SUFFIXES)
    if not files:
        raise ViewSetError(f"view set folder {folder} holds no view files (view_XX.png, cameras.json)")
    return files


def view_indices(folder: Path) -> list[int]:
    """Indices of the set's views: from view_XX images, else (a single strip image) from cameras.json."""
    folder = Path(folder)
    idx = sorted(int(m.group(1)) for p in folder.iterdir() if (m := VIEW_RE.match(p.name)))
    if idx:
        return idx
    cams = folder / "cameras.json"
    if cams.is_file():
        try:
            views = json.loads(cams.read_text(encoding="utf-8")).get("views")
        except (json.JSONDecodeError, AttributeError):
            views = None
        if isinstance(views, list) and views:
            return list(range(len(views)))
    raise ViewSetError(f"view set folder {folder} has no view_XX.png files and no cameras.json listing its views")


def is_viewset(folder: Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (any(VIEW_RE.match(p.name) for p in folder.iterdir())
                                or (folder / "cameras.json").is_file())


def find_viewsets(folder: Path) -> list[Path]:
    """``folder`` itself when it is a view set, else its sub-folders that are (a folder of sets), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ViewSetError(f"view set folder {folder} does not exist or is not a folder")
    if is_viewset(folder):
        return [folder]
    sets = sorted(p for p in folder.iterdir() if is_viewset(p))
    if not sets:
        raise ViewSetError(f"{folder} is neither a view set (view_XX.png + cameras.json) nor a folder of view sets")
    return sets


def files_hash(files: list[Path]) -> str:
    """sha256 over (name, size, content) of every file: the identity of the set's inputs."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + str(p.stat().st_size).encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def chunk_views(views: list[int], size: int) -> list[list[int]]:
    """Split ``views`` (in order) into chunks of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [views[i:i + size] for i in range(0, len(views), size)]


def selection_string(views: list[int]) -> str:
    """[0,1,2,3,8,10,11] -> '0-3,8,10-11' (LoadViewSet's ``views`` syntax)."""
    if not views:
        raise ValueError("empty view selection")
    parts, start, prev = [], views[0], views[0]
    for v in views[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def parse_selection(text: str, count: int) -> list[int]:
    """'all' | '0-3,8' -> sorted unique indices below ``count`` (ValueError naming the bad part)."""
    text = text.strip().lower()
    if text in ("", "all"):
        return list(range(count))
    out = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad view selection '{part}' (expected e.g. 0-3,8)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= count:
            raise ValueError(f"view selection '{part}' is outside 0-{count - 1}")
        out.update(range(a, b + 1))
    return sorted(out)

"""Files, written and recognised: the one atomic writer and the one file fingerprint of the pack (stdlib only).

- :func:`atomic_write_bytes` writes to a temporary name in the destination folder, fsyncs, then ``os.replace``\\ s:
  a reader sees the old file or the whole new one, and a failure (full disk, unwritable folder, Ctrl-C) removes the
  temporary file; an ``OSError`` names the destination.
- :func:`files_digest` is the identity of a list of files: sha256 over each file's name and size and then either its
  modification time (cheap change detection: LoadViewSet's fingerprint) or its bytes (the runner's input hash).
  Names are hashed as the file system's bytes, so a name that is not UTF-8 hashes like any other.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

_BLOCK = 1 << 20


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_write_json(path: str | Path, data, indent: int = 2, sort_keys: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n")


def _update_from_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    _update_from_file(h, Path(path))
    return h.hexdigest()


def files_digest(paths: Iterable[Path], contents: bool = False) -> str:
    """sha256 over (name, size, then mtime or, with ``contents``, the bytes) of every file, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        st = p.stat()
        h.update(os.fsencode(p.name) + b"\0" + str(st.st_size).encode() + b"\0")
        if contents:
            _update_from_file(h, p)
        else:
            h.update(f"{st.st_mtime_ns}\0".encode())
    return h.hexdigest()

"""OUT_DIR/manifest.json: what a run produced, per view, and what makes a rerun skip a view.

A view counts as done when the manifest records it with the current **params hash** (sha256 of the workflow content,
the user's overrides and the input set's content hash) and every file it lists exists in OUT_DIR. Any change to the
workflow, an override or an input file therefore reruns every view; a deleted output reruns that view only.

The manifest is rewritten atomically (:func:`glimpse.files.atomic_write_bytes`) after every finished chunk, so a run
killed at any moment (Ctrl-C, SIGKILL, server death) leaves a manifest that matches the files on disk; ``missing_views``
lists the views still to do and ``complete`` says whether the set is finished.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..files import atomic_write_bytes
from .workflow import canonical_json

FORMAT = "glimpse-enhance-run/1"
MANIFEST = "manifest.json"


def params_hash(workflow: dict, overrides: dict, inputs_hash: str) -> str:
    blob = canonical_json({"workflow": workflow, "overrides": {k: v for k, v in overrides.items() if v is not None},
                           "inputs": inputs_hash})
    return hashlib.sha256(blob.encode()).hexdigest()


def load(out_dir: Path) -> dict:
    """The manifest in ``out_dir`` or an empty one (an unreadable manifest counts as empty: everything reruns)."""
    try:
        data = json.loads((Path(out_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) and data.get("format") == FORMAT else {}


def done_views(manifest: dict, out_dir: Path, params: str) -> set[int]:
    """Views recorded with ``params`` whose listed files all exist in ``out_dir``."""
    done = set()
    for key, entry in manifest.get("views", {}).items():
        files = entry.get("files") or []
        if (entry.get("params") == params and f"view_{int(key):02d}.png" in files
                and all((Path(out_dir) / f).is_file() for f in files)):
            done.add(int(key))
    return done


def new(previous: dict, params: str, *, viewset: str, inputs_hash: str, workflow: str, overrides: dict,
        views: list[int], out_dir: Path) -> dict:
    """A manifest for this run that keeps the previous run's entries that are still valid."""
    keep = done_views(previous, out_dir, params)
    entries = {k: v for k, v in previous.get("views", {}).items() if int(k) in keep}
    return {
        "format": FORMAT,
        "viewset": viewset,
        "inputs_hash": inputs_hash,
        "workflow": workflow,
        "overrides": {k: v for k, v in overrides.items() if v is not None},
        "params_hash": params,
        "view_count": len(views),
        "all_views": views,
        "views": entries,
        "missing_views": [v for v in views if v not in keep],
        "complete": len(keep) == len(views),
        "scores": previous.get("scores") if len(keep) == len(views) and previous.get("params_hash") == params
        else None,
    }


def record(manifest: dict, view: int, params: str, files: list[str], **info) -> None:
    manifest["views"][str(view)] = {"params": params, "files": sorted(files), **info}
    done = {int(k) for k in manifest["views"]}
    manifest["missing_views"] = [v for v in manifest["all_views"] if v not in done]
    manifest["complete"] = not manifest["missing_views"]


def save(manifest: dict, out_dir: Path) -> None:
    atomic_write_bytes(Path(out_dir) / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())

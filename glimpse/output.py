"""Writing results safely: folder names that stay inside the output root, manifests.

- Every file is written with :func:`glimpse.files.atomic_write_bytes` (temp file, fsync, rename).
- :func:`resolve_subfolder` refuses absolute paths and ``..`` and anything that resolves (through symlinks) outside
  the root.
- :func:`claim_folder`: existing results are never overwritten silently. A folder is reused while none of the files
  about to be written exists in it (chunks of one set with different views share it); on a clash
  ``policy="suffix"`` (the default) picks the first free ``name_001``, ``name_002``..., and ``policy="refuse"``
  raises ``FileExistsError``.
- :func:`save_view_set` writes a result set: ``view_XX.png`` (RGBA), ``confidence_XX.png``, ``hint_XX.png``,
  ``cameras.json`` and ``manifest.json`` (the last two merged with what earlier chunks wrote there).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import __version__
from .files import atomic_write_bytes, atomic_write_json
from .types import Cameras


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


def claim_folder(root: str | Path, name: str, files: list[str], policy: str = "suffix") -> Path:
    """Create and return the folder to write ``files`` (bare names) into, never overwriting one of them.

    The folder ``root/name`` is used when none of ``files`` exists in it (so chunks of one view set with different
    views share a folder). Otherwise ``policy="suffix"`` takes the first of ``name_001``, ``name_002``, ... where
    none exists, and ``policy="refuse"`` raises FileExistsError naming the clash.
    """
    if policy not in ("suffix", "refuse"):
        raise ValueError(f"unknown overwrite policy {policy!r}; expected 'suffix' or 'refuse'")
    base = resolve_subfolder(root, name)

    def clash(folder: Path) -> list[str]:
        if folder.exists() and not folder.is_dir():
            return [folder.name]
        return [f for f in files if (folder / f).exists()]

    target = base
    taken = clash(base)
    if taken:
        if policy == "refuse":
            raise FileExistsError(f"{base} already holds {', '.join(taken[:4])}{' ...' if len(taken) > 4 else ''}; "
                                  "choose another subfolder, remove them, or let SaveViewSet pick a suffixed folder")
        if base == Path(root).resolve():
            raise FileExistsError(f"the output folder {base} itself already holds {taken[0]}; give a subfolder name")
        for k in range(1, 10000):
            target = base.with_name(f"{base.name}_{k:03d}")
            if not clash(target):
                break
        else:
            raise FileExistsError(f"no free folder name after {base.name}_9999")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(e.errno, f"cannot create the output folder {target}: {e.strerror or e}") from None
    return target


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and values (CPU, contiguous)."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _matrix_list(m: torch.Tensor) -> list:
    return [[float(x) for x in row] for row in m.tolist()]


def cameras_to_json(cameras: Cameras) -> dict:
    """The cameras.json schema (see ``glimpse.cameras.parse_cameras``) for ``cameras``; views are indexed by their
    original index (``Cameras.view_index``) when the cameras are a selection of a set."""
    h, w = cameras.image_size
    index = cameras.view_index.tolist() if cameras.view_index is not None else list(range(len(cameras)))
    views = []
    for pos, i in enumerate(index):
        views.append({
            "index": int(i), "image_size": [h, w], "convention": "opencv",
            "azimuth_deg": float(cameras.azimuth_deg[pos]), "elevation_deg": float(cameras.elevation_deg[pos]),
            "K": _matrix_list(cameras.intrinsics[pos]),
            "world_to_camera": _matrix_list(cameras.world_to_camera[pos]),
            "camera_to_world": _matrix_list(cameras.camera_to_world[pos]),
        })
    return {
        "convention": {"camera": "OpenCV: x right, y down, z forward; Xc = R Xw + t; pixel = K Xc / Xc.z",
                       "pixel_coordinates": "continuous, origin at the top-left corner; pixel centres at +0.5"},
        "image_size": [h, w],
        "views": views,
    }


def _merge_views(old: list, new: list) -> list:
    by_index = {v["index"]: v for v in old if isinstance(v, dict) and "index" in v}
    by_index.update({v["index"]: v for v in new})
    return [by_index[i] for i in sorted(by_index)]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _merged_cross_view(old: dict, new: dict) -> dict:
    """The chunks of one set each name their own views' anchors: keep the earlier chunks' when the setup is the same."""
    a, b = old.get("cross_view"), new.get("cross_view")
    if not (isinstance(a, dict) and isinstance(b, dict) and "view_anchors" in b):
        return {}
    same = all(a.get(k) == b.get(k) for k in ("mode", "weight", "anchors", "neighbours", "window"))
    return {"cross_view": {**b, "view_anchors": {**(a.get("view_anchors") or {}), **b["view_anchors"]}}} if same else {}


@dataclass
class SavedSet:
    folder: Path
    files: list[str] = field(default_factory=list)  # every file written, in order
    images: list[str] = field(default_factory=list)  # the view_XX.png files
    manifest: dict = field(default_factory=dict)


def save_view_set(root: str | Path, subfolder: str, images: torch.Tensor, *, alpha: torch.Tensor | None = None,
                  confidence: torch.Tensor | None = None, hints: torch.Tensor | None = None,
                  cameras: Cameras | None = None, indices: list[int] | None = None,
                  png_text: dict[str, str] | None = None, manifest: dict | None = None,
                  policy: str = "suffix") -> SavedSet:
    """Write a result set under ``root/subfolder`` (see the module docstring) and return what was written.

    ``images`` [N,H,W,C] in 0..1 (the first 3 channels are colour), ``alpha`` [N,H,W] (written as the PNG's alpha;
    without it the PNG is RGB), ``confidence`` [N,H,W] (8-bit grey), ``hints`` [N,H,W,C]; ``indices`` name the
    files (default: ``cameras.view_index``, else 0..N-1). ``png_text`` goes into every view PNG (ComfyUI's
    ``prompt`` / ``workflow``). ``manifest`` holds the caller's fields (parameters, models, seed, scores...). The
    manifest lists every view of the folder with its files' sha256 and, per chunk written there, the time, views,
    input digests and the caller's fields; the caller's latest fields are also at the top level. Files are written
    one by one, atomically: a failure leaves every earlier file whole and no partial file, and raises OSError naming
    the file.
    """
    n, h, w = images.shape[:3]
    if indices is None:
        indices = cameras.view_index.tolist() if cameras is not None and cameras.view_index is not None \
            else list(range(n))
    if len(indices) != n or len(set(indices)) != n:
        raise ValueError(f"{n} views but view indices {indices}")
    for what, t in (("mask", alpha), ("confidence", confidence)):
        if t is not None and tuple(t.shape) != (n, h, w):
            raise ValueError(f"{what} is {list(t.shape)} but the images are {[n, h, w]} ([N,H,W])")
    if hints is not None and tuple(hints.shape[:3]) != (n, h, w):
        raise ValueError(f"hints are {list(hints.shape[:3])} but the images are {[n, h, w]} ([N,H,W])")
    if cameras is not None and len(cameras) != n:
        raise ValueError(f"{n} views but {len(cameras)} cameras")
    names = []
    for i in indices:
        names.append(f"view_{i:02d}.png")
        if confidence is not None:
            names.append(f"confidence_{i:02d}.png")
        if hints is not None:
            names.append(f"hint_{i:02d}.png")
    folder = claim_folder(root, subfolder, names, policy)
    out = SavedSet(folder)
    views_meta = []
    for pos, i in enumerate(indices):
        rgb = to_uint8(images[pos, ..., :3])
        if alpha is not None:
            rgb = np.concatenate([rgb, to_uint8(alpha[pos])[..., None]], axis=-1)
        entry = {"index": int(i), "size": [h, w]}
        data = png_bytes(rgb, png_text)
        atomic_write_bytes(folder / f"view_{i:02d}.png", data)
        out.files.append(f"view_{i:02d}.png")
        out.images.append(f"view_{i:02d}.png")
        entry["image"], entry["sha256"] = f"view_{i:02d}.png", sha256_bytes(data)
        for key, tensor in (("confidence", confidence), ("hint", hints)):
            if tensor is None:
                continue
            arr = to_uint8(tensor[pos] if tensor.dim() == 3 else tensor[pos, ..., :3])
            data = png_bytes(arr)
            atomic_write_bytes(folder / f"{key}_{i:02d}.png", data)
            out.files.append(f"{key}_{i:02d}.png")
            entry[key], entry[f"{key}_sha256"] = f"{key}_{i:02d}.png", sha256_bytes(data)
        views_meta.append(entry)
    if cameras is not None:
        if cameras.view_index is None or cameras.view_index.tolist() != list(indices):
            cameras = replace(cameras, view_index=torch.tensor(indices))
        cams = cameras_to_json(cameras)
        old = _read_json(folder / "cameras.json")
        if old and old.get("image_size") == cams["image_size"]:
            cams["views"] = _merge_views(old.get("views") or [], cams["views"])
        atomic_write_json(folder / "cameras.json", cams)
        out.files.append("cameras.json")
    inputs = {"images": tensor_digest(images)}
    for key, tensor in (("mask", alpha), ("confidence", confidence), ("hints", hints)):
        if tensor is not None:
            inputs[key] = tensor_digest(tensor)
    if cameras is not None:
        inputs["cameras"] = tensor_digest(torch.cat([cameras.intrinsics.reshape(n, -1),
                                                     cameras.world_to_camera.reshape(n, -1)], dim=1))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    chunk = {"created": now, "views": [int(i) for i in indices], "inputs": inputs, **(manifest or {})}
    old = _read_json(folder / "manifest.json") or {}
    record = {"format": "glimpse-enhance result set", "version": 1, "glimpse_version": __version__, "updated": now,
              **(manifest or {}), **_merged_cross_view(old, manifest or {}),
              "views": _merge_views(old.get("views") if isinstance(old.get("views"), list) else [], views_meta),
              "chunks": (old.get("chunks") if isinstance(old.get("chunks"), list) else []) + [chunk]}
    atomic_write_json(folder / "manifest.json", record)
    out.files.append("manifest.json")
    out.manifest = record
    return out


MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".gguf")
SEED_INPUTS = ("seed", "noise_seed")


def workflow_facts(prompt: dict | None) -> dict:
    """What a ComfyUI API prompt says about a run: ``parameters`` (every node's literal inputs, keyed
    ``"<id> <class_type>"``), ``models`` ({node, class_type, input, name} for inputs naming a model file) and
    ``seeds`` ({node, class_type, input, value})."""
    parameters, models, seeds = {}, [], []
    for node_id, node in sorted((prompt or {}).items(), key=lambda kv: str(kv[0])):
        if not isinstance(node, dict):
            continue
        class_type = node.get("class_type", "?")
        literal = {k: v for k, v in (node.get("inputs") or {}).items()
                   if not (isinstance(v, list) and len(v) == 2 and isinstance(v[1], int))}  # [node, slot] = a link
        parameters[f"{node_id} {class_type}"] = literal
        for key, value in literal.items():
            if isinstance(value, str) and value.lower().endswith(MODEL_EXTENSIONS):
                models.append({"node": str(node_id), "class_type": class_type, "input": key, "name": value})
            if key in SEED_INPUTS and isinstance(value, int):
                seeds.append({"node": str(node_id), "class_type": class_type, "input": key, "value": value})
    return {"parameters": parameters, "models": models, "seeds": seeds}

"""Reading and checking ``cameras.json`` with numpy only, so a view set can be validated without importing torch.

The schema is SyncDreamer's camera file; :mod:`glimpse.cameras` states the conventions and turns a
:class:`CameraFile` into the ``Cameras`` the nodes use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_ROTATION_TOL = 1e-3


@dataclass(frozen=True)
class CameraFile:
    """The checked content of a camera file: K float64 [N,3,3] for ``image_size`` (height, width), ``[R|t]`` float64
    [N,3,4], and the angles in degrees [N] when the file states them for every view (else None)."""

    intrinsics: np.ndarray
    world_to_camera: np.ndarray
    image_size: tuple[int, int]
    azimuth_deg: np.ndarray | None = None
    elevation_deg: np.ndarray | None = None

    def __len__(self) -> int:
        return self.intrinsics.shape[0]

    def resized(self, size: tuple[int, int]) -> CameraFile:
        """The same cameras for images of ``size`` (height, width): the first two rows of K scaled."""
        if tuple(size) == self.image_size:
            return self
        k = scale_k(self.intrinsics, self.image_size, size)
        return CameraFile(k, self.world_to_camera, (int(size[0]), int(size[1])), self.azimuth_deg, self.elevation_deg)


def scale_k(k: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    k = np.array(k, dtype=np.float64)
    k[..., 0, :] *= to_size[1] / from_size[1]
    k[..., 1, :] *= to_size[0] / from_size[0]
    return k


def _matrix(value, shape: tuple[int, int], what: str, source: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {what} is not a numeric matrix ({e})") from None
    if m.shape != shape:
        raise ValueError(f"{source}: {what} has shape {list(m.shape)}, expected {list(shape)}")
    if not np.isfinite(m).all():
        raise ValueError(f"{source}: {what} has non-finite entries")
    return m


def _angles(values: list, what: str, source: str) -> np.ndarray | None:
    if any(v is None for v in values):
        return None
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: {what} must be numbers, got {values!r}") from None
    if a.shape != (len(values),) or not np.isfinite(a).all():
        raise ValueError(f"{source}: {what} must be finite numbers, got {values!r}")
    return a


def parse_camera_data(data: dict, source: str = "cameras.json") -> CameraFile:
    """Check the cameras.json schema and return its cameras.

    ``data["views"]`` is a list of objects with ``K`` (3x3) and ``world_to_camera`` (3x4 or 4x4) or
    ``camera_to_world`` (4x4); optional ``index`` (views are ordered by it and must run 0..N-1), ``image_size``
    ([height, width] the K is given for; a top-level ``image_size`` is the default) and ``azimuth_deg`` /
    ``elevation_deg``. Views whose K is given for another size than the first view's are rescaled to it. Raises
    ValueError naming ``source`` and the view on any malformed entry.
    """
    views = data.get("views") if isinstance(data, dict) else None
    if not isinstance(views, list) or not views:
        raise ValueError(f"{source}: expected an object with a non-empty 'views' list")
    default_size = data.get("image_size")
    entries = []
    for pos, v in enumerate(views):
        if not isinstance(v, dict):
            raise ValueError(f"{source}: views[{pos}] is not an object")
        index = v.get("index", pos)
        if not isinstance(index, int):
            raise ValueError(f"{source}: views[{pos}] has a non-integer index {index!r}")
        entries.append((index, pos, v))
    entries.sort(key=lambda e: e[0])
    indices = [e[0] for e in entries]
    if indices != list(range(len(entries))):
        missing = sorted(set(range(len(entries))) - set(indices))
        raise ValueError(f"{source}: camera indices must run 0..{len(entries) - 1} without gaps or repeats; "
                         f"got {indices}" + (f" (missing {missing})" if missing else ""))

    ks, w2cs, sizes, az, el = [], [], [], [], []
    for index, _, v in entries:
        where = f"{source}: view {index:02d}"
        if "K" not in v:
            raise ValueError(f"{where} has no 'K'")
        k = _matrix(v["K"], (3, 3), "K", where)
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f"{where}: K has non-positive focal lengths fx={k[0, 0]}, fy={k[1, 1]}")
        if "world_to_camera" in v:
            raw = v["world_to_camera"]
            rows = len(raw) if isinstance(raw, list) else 0
            w2c = _matrix(raw, (4, 4) if rows == 4 else (3, 4), "world_to_camera", where)[:3]
        elif "camera_to_world" in v:
            c2w = _matrix(v["camera_to_world"], (4, 4), "camera_to_world", where)
            try:
                w2c = np.linalg.inv(c2w)[:3]
            except np.linalg.LinAlgError:
                raise ValueError(f"{where}: camera_to_world is singular") from None
        else:
            raise ValueError(f"{where} has neither 'world_to_camera' nor 'camera_to_world'")
        r = w2c[:, :3]
        if np.abs(r @ r.T - np.eye(3)).max() > _ROTATION_TOL or np.linalg.det(r) < 0:
            raise ValueError(f"{where}: the rotation part of world_to_camera is not a proper rotation")
        size = v.get("image_size", default_size)
        if size is None:
            raise ValueError(f"{where} has no 'image_size' (and the file has no top-level one)")
        if (not isinstance(size, (list, tuple)) or len(size) != 2
                or not all(isinstance(s, (int, float)) and s > 0 for s in size)):
            raise ValueError(f"{where}: image_size must be [height, width], got {size!r}")
        size = (int(size[0]), int(size[1]))
        ks.append(k if size == (sizes or [size])[0] else scale_k(k, size, sizes[0]))
        w2cs.append(w2c)
        sizes.append(size)
        az.append(v.get("azimuth_deg"))
        el.append(v.get("elevation_deg"))
    azimuth, elevation = _angles(az, "azimuth_deg", source), _angles(el, "elevation_deg", source)
    if azimuth is None or elevation is None:
        azimuth = elevation = None
    else:
        azimuth = azimuth % 360.0
    return CameraFile(np.stack(ks), np.stack(w2cs), sizes[0], azimuth, elevation)


def read_camera_file(path: str | Path) -> CameraFile:
    """Read and check a cameras.json file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: cameras file does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    return parse_camera_data(data, str(path))

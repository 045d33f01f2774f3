"""Pinhole cameras of a view set: reading ``cameras.json``, intrinsics under resize and padding, (un)projection.

Conventions (those of SyncDreamer's cameras, which ``samples/fox/cameras.json`` holds):

- OpenCV camera axes: x right, y down, z forward; points in front of a camera have z > 0.
- ``world_to_camera`` is ``[R|t]`` with ``Xc = R @ Xw + t``; ``camera_to_world`` is its 4x4 inverse.
- Pixel coordinates are continuous with the origin at the top-left *corner* of the image: pixel (col i, row j) has its
  centre at (i + 0.5, j + 0.5). ``pixel = K @ Xc / Xc.z``. Under this convention resizing an image by (sx, sy) scales
  the first two rows of K exactly, and padding by (left, top) adds (left, top) to (cx, cy).
- Depth is camera-space z (not distance along the ray).
- The world is right-handed with +z up; azimuth is measured from +x toward +y, elevation from the xy-plane.

All batched helpers take a leading view dimension N and compute in the dtype of the points/depth they are given.
"""
from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch

from .camera_file import CameraFile, parse_camera_data, read_camera_file
from .types import Cameras


def angles_from_camera_to_world(camera_to_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Azimuth and elevation in degrees [N] of the camera centres (world +z up, azimuth from +x toward +y, 0..360)."""
    c = camera_to_world[..., :3, 3]
    azimuth = torch.rad2deg(torch.atan2(c[..., 1], c[..., 0])) % 360.0
    elevation = torch.rad2deg(torch.atan2(c[..., 2], torch.hypot(c[..., 0], c[..., 1])))
    return azimuth, elevation


def invert_world_to_camera(world_to_camera: torch.Tensor) -> torch.Tensor:
    """[..., 3, 4] rigid ``[R|t]`` -> its [..., 4, 4] inverse ``[[R^T, -R^T t], [0, 0, 0, 1]]``."""
    r = world_to_camera[..., :3, :3]
    t = world_to_camera[..., :3, 3:]
    rt = r.transpose(-1, -2)
    out = torch.zeros(*world_to_camera.shape[:-2], 4, 4, dtype=world_to_camera.dtype)
    out[..., :3, :3] = rt
    out[..., :3, 3:] = -rt @ t
    out[..., 3, 3] = 1.0
    return out


def make_cameras(intrinsics: torch.Tensor, world_to_camera: torch.Tensor, image_size: tuple[int, int],
                 azimuth_deg: torch.Tensor | None = None, elevation_deg: torch.Tensor | None = None) -> Cameras:
    """Build a :class:`Cameras` from K [N,3,3] and ``[R|t]`` [N,3,4] (float64); angles default to the centres'."""
    intrinsics = intrinsics.to(torch.float64)
    world_to_camera = world_to_camera.to(torch.float64)[..., :3, :4]
    camera_to_world = invert_world_to_camera(world_to_camera)
    az, el = angles_from_camera_to_world(camera_to_world)
    return Cameras(
        intrinsics=intrinsics,
        world_to_camera=world_to_camera,
        camera_to_world=camera_to_world,
        azimuth_deg=az if azimuth_deg is None else azimuth_deg.to(torch.float64),
        elevation_deg=el if elevation_deg is None else elevation_deg.to(torch.float64),
        image_size=(int(image_size[0]), int(image_size[1])),
        view_index=torch.arange(intrinsics.shape[0], dtype=torch.int64),
    )


def cameras_from_file(cameras: CameraFile) -> Cameras:
    """The :class:`Cameras` of a checked camera file (angles from the file when it states them, else the centres')."""
    cams = make_cameras(torch.from_numpy(cameras.intrinsics), torch.from_numpy(cameras.world_to_camera),
                        cameras.image_size)
    if cameras.azimuth_deg is not None:
        cams = replace(cams, azimuth_deg=torch.from_numpy(cameras.azimuth_deg),
                       elevation_deg=torch.from_numpy(cameras.elevation_deg))
    return cams


def parse_cameras(data: dict, source: str = "cameras.json") -> Cameras:
    """Parse the cameras.json schema (see :func:`glimpse.camera_file.parse_camera_data`) into :class:`Cameras`;
    raises ValueError naming ``source`` and the view on any malformed entry."""
    return cameras_from_file(parse_camera_data(data, source))


def load_cameras(path: str | Path) -> Cameras:
    """Read a cameras.json file; errors name the file."""
    return cameras_from_file(read_camera_file(path))


def orbit_cameras(n: int, image_size: tuple[int, int] = (256, 256), radius: float = 1.5, elevation_deg: float = 30.0,
                  focal_over_height: float = 280.0 / 256.0, azimuth0_deg: float = 0.0) -> Cameras:
    """``n`` cameras on a circle looking at the origin, world +z up (SyncDreamer's 16 cameras with the defaults).

    Camera i sits at azimuth ``azimuth0_deg + 360 i / n`` and the given elevation, at ``radius`` from the origin, with
    fx = fy = ``focal_over_height * height`` and the principal point at the image centre.
    """
    h, w = image_size
    az = torch.tensor([azimuth0_deg + 360.0 * i / n for i in range(n)], dtype=torch.float64)
    el = torch.full((n,), float(elevation_deg), dtype=torch.float64)
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    centre = radius * torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], -1)
    forward = -centre / centre.norm(dim=-1, keepdim=True)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(forward, up)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right)
    r = torch.stack([right, down, forward], dim=-2)  # rows: camera axes in world coordinates
    t = -(r @ centre.unsqueeze(-1))
    f = focal_over_height * h
    k = torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return make_cameras(k.expand(n, 3, 3).clone(), torch.cat([r, t], -1), (h, w), az % 360.0, el)


def _rows(cameras: Cameras) -> dict[str, torch.Tensor]:
    """The per-view fields of ``cameras``: every tensor field has one row per view (see :class:`Cameras`)."""
    return {f.name: v for f in fields(cameras) if isinstance(v := getattr(cameras, f.name), torch.Tensor)}


def select_cameras(cameras: Cameras, indices: list[int]) -> Cameras:
    """The cameras of the views at positions ``indices``; ``view_index`` keeps their original indices."""
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    base = cameras.view_index if cameras.view_index is not None else torch.arange(len(cameras), dtype=torch.int64)
    return replace(cameras, **{**{k: v[idx] for k, v in _rows(cameras).items()}, "view_index": base[idx]})


def cat_cameras(chunks: list[Cameras]) -> Cameras:
    """The cameras of several chunks of one set as one, in chunk order: the per-view (tensor) fields are
    concatenated, one that some chunk lacks (None) is dropped; every other field describes the whole set and must be
    the same in every chunk (ValueError naming the field otherwise)."""
    if not chunks:
        raise ValueError("no camera chunks to join")
    first = chunks[0]
    joined: dict[str, torch.Tensor | None] = {}
    for f in fields(first):
        values = [getattr(c, f.name) for c in chunks]
        if any(isinstance(v, torch.Tensor) for v in values):
            joined[f.name] = torch.cat(values) if all(isinstance(v, torch.Tensor) for v in values) else None
            continue
        other = next((v for v in values if v != values[0]), values[0])
        if other != values[0]:
            raise ValueError(f"camera chunks of different sets: {f.name} is {values[0]!r} in one and {other!r} in "
                             "another")
    return replace(first, **joined)


def scale_intrinsics(intrinsics: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """K [...,3,3] for an image of ``from_size`` (h, w) -> K for the same view resized to ``to_size`` (h, w)."""
    k = intrinsics.clone()
    k[..., 0, :] *= to_size[1] / from_size[1]
    k[..., 1, :] *= to_size[0] / from_size[0]
    return k


def pad_intrinsics(intrinsics: torch.Tensor, left: float, top: float) -> torch.Tensor:
    """K after adding ``left`` columns and ``top`` rows in front of the image (negative values crop)."""
    k = intrinsics.clone()
    k[..., 0, 2] += left
    k[..., 1, 2] += top
    return k


def letterbox_intrinsics(intrinsics: torch.Tensor, from_size: tuple[int, int], resized: tuple[int, int],
                         offset: tuple[int, int]) -> torch.Tensor:
    """K after resizing ``from_size`` -> ``resized`` (h, w) and placing it at ``offset`` (top, left) on a canvas."""
    return pad_intrinsics(scale_intrinsics(intrinsics, from_size, resized), offset[1], offset[0])


def letterbox_cameras(cameras: Cameras, resized: tuple[int, int], offset: tuple[int, int],
                      canvas: tuple[int, int]) -> Cameras:
    """The cameras of a view set whose images were resized to ``resized`` and padded at ``offset`` onto ``canvas``."""
    k = letterbox_intrinsics(cameras.intrinsics, cameras.image_size, resized, offset)
    return replace(cameras, intrinsics=k, image_size=(int(canvas[0]), int(canvas[1])))


def pixel_centres(height: int, width: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """[H,W,2] continuous (u, v) coordinates of pixel centres: (col + 0.5, row + 0.5)."""
    v = torch.arange(height, dtype=dtype, device=device) + 0.5
    u = torch.arange(width, dtype=dtype, device=device) + 0.5
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


def unproject(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Camera-space points [N,H,W,3] of every pixel centre, from z-depth [N,H,W] and K [N,3,3] (for this H, W).

    ``Xc = z * ((u - cx) / fx, (v - cy) / fy, 1)`` with (u, v) = (col + 0.5, row + 0.5); the result has depth's dtype.
    Invalid pixels (z = 0) unproject to the camera centre; mask them with the depth's validity.
    """
    n, h, w = depth.shape
    k = intrinsics.to(device=depth.device, dtype=torch.float64)
    uv = pixel_centres(h, w, torch.float64, depth.device)
    x = (uv[..., 0] - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None]
    y = (uv[..., 1] - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None]
    rays = torch.stack([x.to(depth.dtype), y.to(depth.dtype), torch.ones_like(x, dtype=depth.dtype)], dim=-1)
    return rays * depth.unsqueeze(-1)


def _broadcast_points(points: torch.Tensor, n: int) -> torch.Tensor:
    """Points [N,...,3] or shared [...,3] -> [N, P, 3] (P = product of the middle dims)."""
    if points.dim() > 2 and points.shape[0] == n:
        return points.reshape(n, -1, 3)
    return points.reshape(1, -1, 3).expand(n, -1, 3)


def _out_shape(points: torch.Tensor, n: int) -> tuple[int, ...]:
    if points.dim() > 2 and points.shape[0] == n:
        return tuple(points.shape[:-1])
    return (n, *points.shape[:-1])


def camera_to_world(points_camera: torch.Tensor, camera_to_world: torch.Tensor) -> torch.Tensor:
    """Camera points [N,...,3] of view n -> world points [N,...,3], with ``camera_to_world`` [N,4,4] (or [N,3,4])."""
    n = camera_to_world.shape[0]
    m = camera_to_world.to(device=points_camera.device, dtype=points_camera.dtype)
    p = points_camera.reshape(n, -1, 3)
    out = p @ m[:, :3, :3].transpose(1, 2) + m[:, None, :3, 3]
    return out.reshape(points_camera.shape)


def world_to_camera(points_world: torch.Tensor, world_to_camera: torch.Tensor) -> torch.Tensor:
    """World points -> camera points [N,...,3] of each of the N cameras ``world_to_camera`` [N,3,4].

    ``points_world`` is either per view [N,M...,3] (at least 3 dims, first dim N) or one shared set [P,3] (2 dims)
    seen by every camera; the result is [N,M...,3] or [N,P,3].
    """
    n = world_to_camera.shape[0]
    m = world_to_camera.to(device=points_world.device, dtype=points_world.dtype)
    shape = _out_shape(points_world, n)
    p = _broadcast_points(points_world, n)
    out = p @ m[:, :3, :3].transpose(1, 2) + m[:, None, :3, 3]
    return out.reshape(*shape, 3)


def project(points_world: torch.Tensor, intrinsics: torch.Tensor,
            world_to_camera_matrices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project world points into N cameras: returns (pixels [N,...,2] continuous (u, v), z [N,...]).

    ``points_world`` is per view [N,...,3] or shared [...,3] (as in :func:`world_to_camera`). Pixel (col i, row j)
    covers [i, i+1) x [j, j+1). Points with z <= 0 are behind the camera; their pixels are meaningless (check z).
    """
    pc = world_to_camera(points_world, world_to_camera_matrices)
    n = intrinsics.shape[0]
    k = intrinsics.to(device=pc.device, dtype=pc.dtype)
    z = pc[..., 2]
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    view = (n,) + (1,) * (pc.dim() - 2)
    u = k[:, 0, 0].view(view) * pc[..., 0] / zs + k[:, 0, 1].view(view) * pc[..., 1] / zs + k[:, 0, 2].view(view)
    v = k[:, 1, 1].view(view) * pc[..., 1] / zs + k[:, 1, 2].view(view)
    return torch.stack([u, v], dim=-1), z


def depth_to_world(depth: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """World points [N,H,W,3] of every pixel of z-depth [N,H,W] taken by ``cameras`` (whose image_size is H, W)."""
    if tuple(depth.shape[1:]) != tuple(cameras.image_size):
        raise ValueError(f"depth is {depth.shape[2]}x{depth.shape[1]} but the cameras are for "
                         f"{cameras.image_size[1]}x{cameras.image_size[0]}")
    return camera_to_world(unproject(depth, cameras.intrinsics), cameras.camera_to_world)


def fov_y_deg(cameras: Cameras) -> torch.Tensor:
    """Vertical field of view in degrees [N]."""
    return torch.rad2deg(2 * torch.atan(cameras.image_size[0] / (2 * cameras.intrinsics[:, 1, 1])))


__all__ = [
    "angles_from_camera_to_world", "camera_to_world", "cat_cameras", "depth_to_world", "fov_y_deg",
    "invert_world_to_camera", "letterbox_cameras", "letterbox_intrinsics", "load_cameras", "make_cameras",
    "orbit_cameras", "pad_intrinsics", "parse_cameras", "pixel_centres", "project", "scale_intrinsics",
    "select_cameras", "unproject", "world_to_camera",
]

"""Renderer depth and cameras at an attention layer's token grid, and token correspondences between two views.

A self-attention layer of the UNet works on a grid of tokens, each covering a block of image pixels (16 x 16 and
32 x 32 for SDXL's two attention resolutions). A token has depth when at least half of its block has; its 3D point is
its centre pixel's (the block's mean depth at the block centre when the centre pixel has none). A token of view i
corresponds to the token of view j that its point projects into, when the point is in front of view j, inside its
image, and visible there: view j's own depth at the exact projected pixel agrees with the point's depth (relative
tolerance), so a point behind the surface view j sees there is occluded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cameras import camera_to_world, project
from ..types import Cameras, DepthMaps

MIN_COVERAGE = 0.5  # share of a token's pixels that must have depth
DEPTH_TOLERANCE = 0.03  # relative depth difference at the projected pixel still counted as the same surface


@dataclass(frozen=True)
class TokenGeometry:
    """Views at one token grid: each token's world point ``points`` float64 [N,h,w,3] and ``valid`` [N,h,w], plus
    the full-resolution depth (0 = none) and cameras that the visibility test reads."""

    points: torch.Tensor
    valid: torch.Tensor
    depth: torch.Tensor
    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.valid.shape[1]), int(self.valid.shape[2])


def token_geometry(depth: DepthMaps, cameras: Cameras, grid: tuple[int, int]) -> TokenGeometry:
    """Each token's 3D point and depth validity at the token grid (h, w) of views [N,H,W]."""
    n, height, width = depth.depth.shape
    if (height, width) != tuple(cameras.image_size):
        raise ValueError(f"depth is {width}x{height} but the cameras are for "
                         f"{cameras.image_size[1]}x{cameras.image_size[0]}")
    h, w = grid
    z = depth.depth.to(torch.float64) * depth.valid
    valid = depth.valid[:, None].to(torch.float64)
    coverage = F.adaptive_avg_pool2d(valid, grid)[:, 0]
    mean = F.adaptive_avg_pool2d(z[:, None], grid)[:, 0] / coverage.clamp_min(1e-12)
    rows = torch.floor((torch.arange(h, dtype=torch.float64) + 0.5) * height / h).long()
    cols = torch.floor((torch.arange(w, dtype=torch.float64) + 0.5) * width / w).long()
    centre = z[:, rows][:, :, cols]  # [N,h,w]: the centre pixel's depth
    has_centre = centre > 0
    u = torch.where(has_centre, cols.to(torch.float64)[None, None, :] + 0.5,
                    (torch.arange(w, dtype=torch.float64)[None, None, :] + 0.5) * width / w)
    v = torch.where(has_centre, rows.to(torch.float64)[None, :, None] + 0.5,
                    (torch.arange(h, dtype=torch.float64)[None, :, None] + 0.5) * height / h)
    zt = torch.where(has_centre, centre, mean)
    k = cameras.intrinsics.to(torch.float64)
    x = (u - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None] * zt
    y = (v - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None] * zt
    points = camera_to_world(torch.stack([x, y, zt], -1), cameras.camera_to_world)
    return TokenGeometry(points=points, valid=coverage >= MIN_COVERAGE, depth=z, intrinsics=k,
                         world_to_camera=cameras.world_to_camera)


def correspondences(src: TokenGeometry, i: int, dst: TokenGeometry, j: int,
                    tolerance: float = DEPTH_TOLERANCE) -> torch.Tensor:
    """int64 [h*w]: for each token of view ``i`` of ``src``, the flat index of its token in view ``j`` of ``dst``,
    or -1 (no depth, behind or outside view j, or hidden there)."""
    h, w = src.grid
    if dst.grid != (h, w):
        raise ValueError(f"token grids differ: {src.grid} vs {dst.grid}")
    height, width = dst.depth.shape[1:]
    uv, zp = project(src.points[i:i + 1], dst.intrinsics[j:j + 1], dst.world_to_camera[j:j + 1])
    col, row, zp = torch.floor(uv[0, ..., 0]), torch.floor(uv[0, ..., 1]), zp[0]
    inside = (zp > 0) & (col >= 0) & (col < width) & (row >= 0) & (row < height) & src.valid[i]
    seen = dst.depth[j][row.clamp(0, height - 1).long(), col.clamp(0, width - 1).long()]
    visible = inside & (seen > 0) & ((zp - seen).abs() <= tolerance * seen)
    token = (torch.floor(row * h / height) * w + torch.floor(col * w / width)).long()
    ok = visible & dst.valid[j][token.clamp(0, h * w - 1) // w, token.clamp(0, h * w - 1) % w]
    return torch.where(ok, token, torch.full_like(token, -1)).reshape(-1)


def windows(centres: torch.Tensor, grid: tuple[int, int], radius: int,
            valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (2r+1)^2 tokens around each centre: (indices int64 [T, W], mask bool [T, W]).

    ``centres`` int64 [T] flat token indices (-1: none, all masked). Tokens outside the grid are masked, and so are
    tokens whose ``valid`` (bool [h, w] or [h*w], the grid's depth validity) is False; masked indices point at token 0.
    """
    h, w = grid
    r = torch.arange(-radius, radius + 1)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    dy, dx = dy.reshape(-1), dx.reshape(-1)
    has = centres >= 0
    cy, cx = torch.div(centres.clamp_min(0), w, rounding_mode="floor"), centres.clamp_min(0) % w
    y, x = cy[:, None] + dy, cx[:, None] + dx
    mask = has[:, None] & (y >= 0) & (y < h) & (x >= 0) & (x < w)
    index = torch.where(mask, y * w + x, torch.zeros_like(y))
    if valid is not None:
        mask &= valid.reshape(-1)[index]
    return index, mask

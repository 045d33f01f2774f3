"""Ray-cast spheres at known cameras: views, alpha and exact z-depth, for tests whose geometry must be known exactly.

Colour is a smooth function of the world position, so views of the scene agree perfectly up to rasterisation (one
sample per pixel centre).
"""
import math

import torch

from glimpse.types import DepthMaps

SIZE = 128


def texture(x: torch.Tensor) -> torch.Tensor:
    """Smooth colour [...,3] of a world point [...,3]."""
    return torch.stack([0.5 + 0.35 * torch.sin(7.0 * x[..., k] + 3.0 * x[..., (k + 1) % 3] + k) for k in range(3)], -1)


def red(x: torch.Tensor) -> torch.Tensor:
    return torch.tensor([0.95, 0.05, 0.05]).expand(*x.shape[:-1], 3)


def rays(cameras, size=SIZE):
    """Camera-space directions with z = 1 (so the ray parameter is the z-depth) and their world versions."""
    k = cameras.intrinsics.float()
    v, u = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    x = (u - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None]
    y = (v - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    c2w = cameras.camera_to_world.float()
    d_world = d_cam @ c2w[:, None, :3, :3].transpose(-1, -2)
    return d_world, c2w[:, :3, 3]


def hit(origin, d, centre, radius):
    """Ray parameter of the first hit of a sphere (inf where missed)."""
    oc = origin[:, None, None, :] - centre
    a = (d * d).sum(-1)
    b = (d * oc).sum(-1)
    c = (oc * oc).sum(-1) - radius * radius
    disc = b * b - a * c
    t = (-b - disc.clamp_min(0).sqrt()) / a
    return torch.where((disc > 0) & (t > 0), t, torch.full_like(t, math.inf))


def render(spheres, cameras, size=SIZE):
    """Views [N,H,W,3], alpha [N,H,W], DepthMaps of the scene."""
    d, origin = rays(cameras, size)
    best = torch.full(d.shape[:-1], math.inf)
    colour = torch.zeros(*d.shape[:-1], 3)
    for centre, radius, paint in spheres:
        t = hit(origin, d, centre, radius)
        closer = t < best
        point = origin[:, None, None, :] + t.clamp_max(1e3)[..., None] * d
        colour = torch.where(closer[..., None], paint(point), colour)
        best = torch.where(closer, t, best)
    valid = torch.isfinite(best)
    depth = torch.where(valid, best, torch.zeros_like(best))
    return colour, valid.float(), DepthMaps(depth=depth, valid=valid)


def visible_in(points, cams, j, spheres):
    """For world points [M,3]: is each the first surface along camera j's ray through it?"""
    origin = cams.camera_to_world[j, :3, 3].float()
    d = points - origin
    t_point = torch.ones(points.shape[0])
    first = torch.full((points.shape[0],), math.inf)
    for centre, radius, _ in spheres:
        first = torch.minimum(first, hit(origin[None], d[None, None], centre, radius)[0, 0])
    return first >= t_point - 1e-3

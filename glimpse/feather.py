"""Exact box filters, erosion and feathering of per-view masks ([N,H,W]), vectorised with integral sums.

All counts are integers, accumulated in a float type that holds them exactly, so a window that is entirely inside a mask
gives exactly 1.0 and one that is entirely outside exactly 0.0: a feathered weight is never 0.99999994 where it should
be 1. Image borders are treated as replicated (the frame edge is not a boundary of the mask).
"""
from __future__ import annotations

import torch


def _cumsum_(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Cumulative sum along ``dim`` in place. Along rows (dim -2) torch.cumsum walks memory with a large stride and
    is several times slower than adding each row to the next, which touches contiguous memory."""
    if dim in (-1, x.dim() - 1):
        return torch.cumsum(x, dim=-1, out=x)
    for i in range(1, x.shape[dim]):
        x.select(dim, i).add_(x.select(dim, i - 1))
    return x


def _box_sum_1d(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """Sum over the window [i-r, i+r] along ``dim``, with replicated borders."""
    if r <= 0:
        return x
    n = x.shape[dim]
    rep = [-1] * x.dim()
    rep[dim] = r
    zero_shape = list(x.shape)
    zero_shape[dim] = 1
    c = torch.cat([torch.zeros(zero_shape, dtype=x.dtype, device=x.device), x.narrow(dim, 0, 1).expand(*rep), x,
                   x.narrow(dim, n - 1, 1).expand(*rep)], dim=dim)
    _cumsum_(c, dim)
    return c.narrow(dim, 2 * r + 1, n) - c.narrow(dim, 0, n)


def box_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """Sum of ``x`` ([N,H,W], integer-valued) over the (2r+1)x(2r+1) square around each pixel."""
    return _box_sum_1d(_box_sum_1d(x, r, -1), r, -2)


def _count_dtype(bound: float) -> torch.dtype:
    """float32 counts integers exactly below 2^24 (and its cumsum is several times faster than int32's)."""
    return torch.float32 if bound < 2**24 else torch.float64


def erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Keep the pixels of ``mask`` (bool [N,H,W]) whose whole (2r+1)^2 square lies inside it (chessboard erosion)."""
    mask = mask.bool()
    if r <= 0:
        return mask
    side = 2 * r + 1
    counts = box_sum(mask.to(_count_dtype(float(max(mask.shape[-2:]) + 2 * r) * side)), r)
    return counts == side * side


def dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Pixels within chessboard distance ``r`` of ``mask`` (bool [N,H,W])."""
    return ~erode(~mask.bool(), r)


def tent(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Smooth a bool mask [N,H,W] with two box filters whose supports add up to ``r`` px; float32 in [0, 1].

    The result is exactly 1 where every pixel within ``r`` is set and exactly 0 where none is.
    """
    mask = mask.bool()
    if r <= 0:
        return mask.float()
    h1, h2 = r // 2, r - r // 2
    s1, s2 = 2 * h1 + 1, 2 * h2 + 1
    bound = float(max(mask.shape[-2:]) + 2 * r) * s1 * s1 * s2
    counts = box_sum(box_sum(mask.to(_count_dtype(bound)), h1), h2)
    return (counts / float(s1 * s1 * s2 * s2)).float()


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft version of a bool mask [N,H,W] that never reaches outside it; float32 in [0, 1].

    Pixels outside ``mask`` get exactly 0, pixels farther than ``radius`` px (chessboard distance) from its outside get
    exactly 1, and the band between ramps smoothly (erosion by ceil(radius/2), then a tent of support floor(radius/2)).
    """
    mask = mask.bool()
    if radius <= 0:
        return mask.float()
    a, b = radius - radius // 2, radius // 2
    return tent(erode(mask, a), b) * mask

"""Resizing IMAGE and MASK batches to another view size (e.g. the renders to the size of the enhanced views)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """IMAGE [N,H,W,C] or MASK [N,H,W] at ``size`` (h, w): bilinear, antialiased when shrinking, float32 clamped to
    0..1 (bilinear weights keep values in range up to rounding). ``x`` itself when it has that size already."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[1:3]) == size:
        return x
    channels_last = x.dim() == 4
    t = x.movedim(-1, 1) if channels_last else x[:, None]
    t = F.interpolate(t.float(), size=size, mode="bilinear", antialias=t.shape[-2] > size[0], align_corners=False)
    t = t.clamp(0, 1)
    return t.movedim(1, -1) if channels_last else t[:, 0]

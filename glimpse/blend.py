"""Put the enhanced pixels back where they are trusted: ``out = lerp(original, enhanced, weight)``.

``torch.lerp`` is exact at its ends, so weight 1 gives the enhanced value bit for bit and weight 0 the original one.
Weights come from :func:`glimpse.confidence.blend_weights` (0 on background and untrusted pixels).
"""
from __future__ import annotations

import torch

from .confidence import confidence_weights, nonzero_box, upsample_weight
from . import buffers
from .threads import map_views, single_threaded
from .types import Cameras, DepthMaps


def _check_images(original: torch.Tensor, enhanced: torch.Tensor) -> None:
    if original.dim() != 4 or enhanced.dim() != 4:
        raise ValueError(f"images must be [N,H,W,C]; got original {list(original.shape)}, "
                         f"enhanced {list(enhanced.shape)}")
    if original.shape[0] != enhanced.shape[0]:
        raise ValueError(f"{original.shape[0]} original views but {enhanced.shape[0]} enhanced views")
    if original.shape[1:3] != enhanced.shape[1:3]:
        raise ValueError(f"enhanced views are {enhanced.shape[2]}x{enhanced.shape[1]} but the originals are "
                         f"{original.shape[2]}x{original.shape[1]}; resize one to the other first")


def blend(original: torch.Tensor, enhanced: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[N,H,W,C] images and a weight [N,H,W] in [0, 1] -> [N,H,W,C]; channels beyond the enhanced image's (an alpha
    channel of the original) are kept from the original."""
    _check_images(original, enhanced)
    out = torch.empty_like(original)
    for i in range(original.shape[0]):  # per view: temporaries stay small enough for the allocator to reuse them
        out[i].copy_(original[i])
        box = nonzero_box(weight[i])
        if box is not None:
            _blend_box(out[i], original[i], enhanced[i], weight[i], box)
    return out


def _blend_box(out: torch.Tensor, original: torch.Tensor, enhanced: torch.Tensor, weight: torch.Tensor,
               box: tuple[slice, slice]) -> None:
    """lerp inside ``box`` of one view; ``out`` already holds the original."""
    c = min(original.shape[-1], enhanced.shape[-1])
    w = weight[box].to(device=original.device, dtype=original.dtype)
    w = w[..., None].expand(*w.shape, c).contiguous()  # a broadcast weight makes lerp about 1.5x slower
    enh = enhanced[box][..., :c].to(original.device, original.dtype)
    torch.lerp(original[box][..., :c], enh, w, out=out[box][..., :c])


def confidence_blend(original: torch.Tensor, enhanced: torch.Tensor, alpha: torch.Tensor, depth: DepthMaps,
                     cameras: Cameras, *, threshold: float = 0.6, feather_radius: int = 6,
                     weights: dict[str, float] | None = None, edge_radius: int = 8, work_size: int | None = 512,
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The whole ConfidenceBlend: returns (blended [N,H,W,C], blend weight [N,H,W], per-signal confidences at the
    working size). See :func:`glimpse.confidence.confidence_weights` for the parameters. CPU work runs
    single-threaded (:mod:`glimpse.threads`)."""
    _check_images(original, enhanced)
    if tuple(alpha.shape) != tuple(original.shape[:3]):
        raise ValueError(f"mask is {list(alpha.shape)} but the views are {list(original.shape[:3])} ([N,H,W])")
    with single_threaded(original.device):
        return _confidence_blend(original, enhanced, alpha, depth, cameras, threshold, feather_radius, weights,
                                 edge_radius, work_size)


def _confidence_blend(original, enhanced, alpha, depth, cameras, threshold, feather_radius, weights, edge_radius,
                      work_size):
    small, signals, _ = confidence_weights(alpha, depth, cameras, threshold=threshold, feather_radius=feather_radius,
                                           weights=weights, edge_radius=edge_radius, work_size=work_size)
    size = tuple(alpha.shape[1:])
    if original.device.type == "cpu":  # huge-page memory: fewer first-touch page faults (glimpse.buffers)
        out, weight = buffers.empty(tuple(original.shape), original.dtype), buffers.zeros(tuple(alpha.shape))
    else:
        out = torch.empty_like(original)
        weight = torch.zeros(alpha.shape, dtype=torch.float32, device=original.device)

    def one(i: int) -> None:
        out[i].copy_(original[i])
        box = nonzero_box(small[i], size)
        if box is not None:
            weight[i][box] = upsample_weight(small[i], alpha[i], box=box)
            _blend_box(out[i], original[i], enhanced[i], weight[i], box)

    map_views(one, range(original.shape[0]), original.device)
    return out, weight, signals


def confidence_preview(original: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """RGB preview [N,H,W,3]: inside the render, the original's grey level tinted green where the enhanced view is
    used and red where the original is kept; outside it, the original."""
    rgb = original[..., :3]
    grey = (rgb * torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)).sum(-1, keepdim=True)
    w = weight.to(rgb.dtype)[..., None]
    tint = torch.cat([1.0 - w, w, torch.zeros_like(w)], dim=-1)
    shown = 0.5 * grey + 0.5 * tint
    inside = (alpha > 0).to(rgb.dtype)[..., None]
    return torch.lerp(rgb, shown, inside)

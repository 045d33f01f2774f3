"""Depth hints for depth ControlNets, and monocular depth made consistent across the views of a set.

Every SDXL depth ControlNet/adapter in use (xinsir depth, diffusers depth full/mid/small, union promax depth, the
T2I-Adapter depth) expects an inverse-depth-like image: near = white, far = black. A set's hint uses ONE near/far for
all of its views (robust percentiles over every valid pixel of every view), so one depth maps to one grey level in
every view; background (invalid depth) is 0. Normalising each view on its own (per-view min-max) gives every view its
own contrast, and the ControlNet then sees a different relief per view.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from . import buffers
from .threads import map_views
from .types import DepthMaps

MODES = ("shared_inverse", "shared_linear")
DEFAULT_PERCENTILES = (1.0, 99.0)
DEFAULT_FLOOR = 0.1
_MAX_SAMPLES = 1 << 20


def _sample(values: torch.Tensor, max_samples: int = _MAX_SAMPLES) -> torch.Tensor:
    """A deterministic strided subsample of a 1-D tensor, at most ``max_samples`` long."""
    step = -(-values.numel() // max_samples)
    return values[::step] if step > 1 else values


def percentiles(values: torch.Tensor, qs: tuple[float, ...], max_samples: int = _MAX_SAMPLES) -> list[float]:
    """Percentiles (0..100) of a 1-D tensor, nearest rank, on a strided subsample of at most ``max_samples``."""
    v = _sample(values.reshape(-1), max_samples).to(torch.float32)
    if v.numel() == 0:
        raise ValueError("percentiles of an empty set")
    ks = [min(v.numel(), max(1, 1 + round(q / 100.0 * (v.numel() - 1)))) for q in qs]
    return [float(torch.kthvalue(v, k).values) for k in ks]


def valid_depth_samples(depth: DepthMaps, max_samples: int = _MAX_SAMPLES) -> torch.Tensor:
    """The valid z values of all views, strided down to about ``max_samples`` before masking (fast on big sets)."""
    step = sample_stride(depth.depth.numel(), max_samples)
    z = depth.depth.reshape(-1)[::step]
    return z[depth.valid.reshape(-1)[::step]]


def near_far_of(z: torch.Tensor, qs: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """(near, far): the ``qs`` percentiles of valid z samples (1-D, all > 0)."""
    if z.numel() == 0:
        raise ValueError("no view of the set has a valid depth pixel; cannot choose near/far")
    near, far = percentiles(z, qs)
    return near, max(far, near)


def sample_stride(total_pixels: int, max_samples: int = _MAX_SAMPLES) -> int:
    """The stride :func:`valid_depth_samples` uses for a set of ``total_pixels`` depth pixels."""
    return max(1, total_pixels // (4 * max_samples))


def near_far(depth: DepthMaps, qs: tuple[float, float] = DEFAULT_PERCENTILES) -> tuple[float, float]:
    """One (near, far) z for a whole set: the ``qs`` percentiles of z over all valid pixels of all views."""
    z = valid_depth_samples(depth)
    if z.numel() == 0:
        z = depth.depth[depth.valid]
    return near_far_of(z, qs)


def with_set_range(depth: DepthMaps, qs: tuple[float, float] = DEFAULT_PERCENTILES) -> DepthMaps:
    """The maps with their set-wide near/far fixed (robust percentiles over all views); unchanged if none is valid."""
    if not bool(depth.valid.any()):
        return replace(depth, near=None, far=None)
    near, far = near_far(depth, qs)
    return replace(depth, near=near, far=far)


def depth_hint(depth: DepthMaps, mode: str = "shared_inverse", qs: tuple[float, float] = DEFAULT_PERCENTILES,
               floor: float = DEFAULT_FLOOR, near_far_z: tuple[float, float] | None = None) -> torch.Tensor:
    """The ControlNet hint of a set: float32 [N,H,W,3] in 0..1, near = 1, far = ``floor``, background = 0.

    ``shared_inverse`` (default) is linear in 1/z between 1/near and 1/far, ``shared_linear`` linear in z; both use
    one (near, far) for every view: ``near_far_z``, else the set-wide range the maps carry (``depth.near/far``, fixed
    when the whole set was loaded, so a chunk of views gets the set's grey levels), else :func:`near_far` with
    percentiles ``qs`` over these maps. Depth outside
    [near, far] is clamped. The farthest surface sits at ``floor`` (not 0) so silhouettes stay visible against the
    background.
    """
    if mode not in MODES:
        raise ValueError(f"depth hint mode {mode!r}: expected one of {', '.join(MODES)}")
    if near_far_z is not None:
        near, far = near_far_z
    elif depth.near is not None and depth.far is not None:
        near, far = depth.near, depth.far
    else:
        near, far = near_far(depth, qs)
    if not (near > 0 and far >= near):
        raise ValueError(f"near/far must satisfy 0 < near <= far, got near={near}, far={far}")
    n, h, w = depth.depth.shape
    if mode == "shared_inverse":
        lo, hi = 1.0 / far, 1.0 / near
    else:
        lo, hi = -far, -near
    flat = not hi - lo > 1e-12 * max(abs(hi), 1.0)
    scale = 0.0 if flat else (1.0 - floor) / (hi - lo)
    if depth.depth.device.type != "cpu":
        return _hint_torch(depth, mode, near, far, lo, scale, floor, flat)
    # CPU: numpy, one view per task (single-threaded passes that stay in cache; no thread-pool stalls), the affine
    # map as one multiply and one add, the background zeroed by multiplying with the valid mask
    out = buffers.empty((n, h, w, 3))
    out_np = out.numpy()
    sign = np.float32(scale if mode == "shared_inverse" else -scale)
    offset = np.float32(floor - lo * scale)

    def one(i: int) -> None:
        x = np.clip(depth.depth[i].numpy(), np.float32(near), np.float32(far), dtype=np.float32)
        if flat:
            x.fill(1.0)
        else:
            if mode == "shared_inverse":
                np.reciprocal(x, out=x)
            np.multiply(x, sign, out=x)
            np.add(x, offset, out=x)
        np.multiply(x, depth.valid[i].numpy(), out=x)
        out_np[i] = x[..., None]

    map_views(one, range(n))
    return out


def _hint_torch(depth: DepthMaps, mode: str, near: float, far: float, lo: float, scale: float, floor: float,
                flat: bool) -> torch.Tensor:
    """:func:`depth_hint` on the depth's own device (for tensors that are not on the CPU)."""
    x = depth.depth.to(torch.float32).clamp(min=near, max=far)
    x = x.reciprocal() if mode == "shared_inverse" else -x
    x = torch.ones_like(x) if flat else (x - lo) * scale + floor
    return torch.where(depth.valid, x, torch.zeros_like(x)).unsqueeze(-1).repeat(1, 1, 1, 3)


# ------------------------------------------------------------------------------------------------ monocular depth

def normalise_jointly(pred: torch.Tensor, mask: torch.Tensor | None = None,
                      qs: tuple[float, float] = DEFAULT_PERCENTILES) -> torch.Tensor:
    """Relative predictions [N,H,W] -> one affine map for all views, the ``qs`` percentiles (over ``mask``) -> 0, 1."""
    vals = pred[mask] if mask is not None else pred.reshape(-1)
    if vals.numel() == 0:
        vals = pred.reshape(-1)
    lo, hi = percentiles(vals, qs)
    return (pred - lo) / max(hi - lo, 1e-8)


def fit_scale_shift(x: torch.Tensor, y: torch.Tensor, trim: float = 3.0) -> tuple[float, float]:
    """Least-squares ``y ~ s x + b`` over 1-D samples, refitted once without residuals beyond ``trim`` MADs."""
    x, y = x.to(torch.float64), y.to(torch.float64)

    def solve(xx, yy):
        a = torch.stack([xx, torch.ones_like(xx)], dim=1)
        sol = torch.linalg.lstsq(a, yy.unsqueeze(1)).solution[:, 0]
        return float(sol[0]), float(sol[1])

    s, b = solve(x, y)
    r = (y - (s * x + b)).abs()
    mad = float(r.median())
    keep = r <= trim * max(mad * 1.4826, 1e-12)
    if 8 <= int(keep.sum()) < x.numel():
        s, b = solve(x[keep], y[keep])
    return s, b


def align_monocular(pred_inverse: torch.Tensor, depth: DepthMaps | None = None, mask: torch.Tensor | None = None,
                    min_pixels: int = 64) -> tuple[DepthMaps, list[str]]:
    """Make per-view relative inverse-depth predictions [N,H,W] one consistent depth for the set.

    1. Joint normalisation: one affine map for all views (percentiles over the foreground ``mask``, bool [N,H,W]).
    2. Where renderer ``depth`` exists, fit inverse depth 1/z per view by least squares (scale and shift) on the
       pixels where it is valid (views with fewer than ``min_pixels`` of them use one fit pooled over all views).
       Renderer depth is kept where valid; the aligned estimate fills the rest of the foreground.
    3. Without any renderer depth the normalised inverse depth d in 0..1 is mapped to relative z = 1 / (0.5 + 0.5 d)
       (units are arbitrary; only the shared hint of it matters).

    Returns the depth (valid = foreground with a positive estimate, or valid renderer depth) and one line per view
    saying how it was aligned.
    """
    pred = pred_inverse.to(torch.float32)
    n = pred.shape[0]
    fg = mask.bool() if mask is not None else torch.ones_like(pred, dtype=torch.bool)
    d = normalise_jointly(pred, fg)
    notes = []
    have = depth is not None and bool(depth.valid.any())
    if have:
        if tuple(depth.depth.shape) != tuple(pred.shape):
            raise ValueError(f"renderer depth is {list(depth.depth.shape)} but the predictions are {list(pred.shape)}")
        valid = depth.valid
        target = torch.where(valid, 1.0 / depth.depth.clamp_min(1e-12), torch.zeros_like(pred))
        pooled = fit_scale_shift(_sample(d[valid], 1 << 20), _sample(target[valid], 1 << 20))
        inv = torch.empty_like(d)
        for i in range(n):
            count = int(valid[i].sum())
            if count >= min_pixels:
                s, b = fit_scale_shift(d[i][valid[i]], target[i][valid[i]])
                notes.append(f"view_{i:02d}: aligned to renderer depth on {count} pixels (scale {s:.4g}, "
                             f"shift {b:.4g})")
            else:
                s, b = pooled
                notes.append(f"view_{i:02d}: {count} renderer depth pixels; used the set-wide fit")
            inv[i] = s * d[i] + b
        est_ok = fg & (inv > 1e-6)
        z = torch.where(valid, depth.depth, torch.where(est_ok, 1.0 / inv.clamp_min(1e-6), torch.zeros_like(inv)))
        out_valid = valid | est_ok
    else:
        inv = 0.5 + 0.5 * d
        out_valid = fg & (inv > 1e-3)
        z = torch.where(out_valid, 1.0 / inv.clamp_min(1e-3), torch.zeros_like(inv))
        notes = [f"view_{i:02d}: jointly normalised (no renderer depth)" for i in range(n)]
    z = torch.where(out_valid, z, torch.zeros_like(z))
    return DepthMaps(depth=z.contiguous(), valid=out_valid & (z > 0)), notes


def merge_depth(primary: DepthMaps, fallback: DepthMaps, views: list[int]) -> DepthMaps:
    """``primary`` with the given views replaced by ``fallback``'s."""
    z, v = primary.depth.clone(), primary.valid.clone()
    for i in views:
        z[i], v[i] = fallback.depth[i], fallback.valid[i]
    return DepthMaps(depth=z, valid=v)

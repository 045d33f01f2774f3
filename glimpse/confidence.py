"""Which pixels of an enhanced view to trust, from the renderer's own signals.

Each signal is a pure function that maps a view batch to a per-pixel confidence in [0, 1] ([N,H,W] float32):

- :func:`opacity_confidence`: low render opacity (alpha) is untrusted;
- :func:`edge_confidence`: pixels near a depth discontinuity (occlusion boundary or silhouette) are untrusted;
- :func:`grazing_confidence`: surfaces seen at a grazing angle (normal from depth and intrinsics against the view
  ray) are untrusted.

:func:`combine` takes their weighted geometric mean (one signal near 0 pulls the pixel down whatever the others say;
a weight of 0 ignores a signal). :func:`blend_weights` thresholds that and feathers the trusted region inwards, so the
weight is exactly 0 on every untrusted pixel, exactly 1 deep inside the trusted region, and ramps smoothly in between
(see :func:`glimpse.feather.feather`). :func:`confidence_weights` runs the whole chain at a bounded working size.

Depth follows :class:`glimpse.types.DepthMaps`: metric camera-space z, 0 where invalid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cameras import pad_intrinsics, scale_intrinsics, select_cameras
from .feather import feather
from .threads import map_views, view_groups
from .types import Cameras, DepthMaps

SIGNALS = ("opacity", "edge", "grazing")
DEFAULT_WEIGHTS = {"opacity": 1.0, "edge": 1.0, "grazing": 1.0}


def smoothstep(edge0: float, edge1: float, x: torch.Tensor) -> torch.Tensor:
    """0 below ``edge0``, 1 above ``edge1``, C1-smooth in between (exactly 0 and 1 at the ends)."""
    t = ((x - edge0) / (edge1 - edge0)).clamp_(0.0, 1.0)
    return (3.0 - 2.0 * t).mul_(t).mul_(t)


def opacity_confidence(alpha: torch.Tensor, low: float = 0.5, high: float = 1.0) -> torch.Tensor:
    """Alpha [N,H,W] -> confidence: 0 at or below ``low``, 1 at ``high`` (fully opaque), smooth in between."""
    return smoothstep(low, high, alpha.float())


def depth_at_size(depth: DepthMaps, cameras: Cameras, size: tuple[int, int]) -> tuple[DepthMaps, torch.Tensor]:
    """Depth resized to ``size`` (h, w) with nearest sampling (never mixes foreground and background) and K [N,3,3]
    for that size; depth is returned with exactly 0 where it is invalid."""
    h, w = size
    k = scale_intrinsics(cameras.intrinsics, cameras.image_size, (h, w))
    z, valid = depth.depth.float(), depth.valid.bool()
    if tuple(z.shape[-2:]) != (h, w):  # gathering the sampled pixels reads only those (a bool map stays bool)
        rows, cols = nearest_indices(z.shape[-2], h, z.device), nearest_indices(z.shape[-1], w, z.device)
        z, valid = take_pixels(z, rows, cols), take_pixels(valid, rows, cols)
    valid = valid & (z > 0) & torch.isfinite(z)
    return DepthMaps(depth=torch.where(valid, z, 0.0), valid=valid, near=depth.near, far=depth.far), k


def nearest_indices(n: int, size: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The ``size`` source indices along an axis of ``n`` pixels that ``F.interpolate(mode="nearest-exact")`` samples
    (computed by it, so indexing with them gives its result bit for bit)."""
    index = torch.arange(n, dtype=torch.float32, device=device)  # exact: n < 2^24
    return F.interpolate(index[None, None], size=size, mode="nearest-exact")[0, 0].long()


def take_pixels(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``x[:, rows][:, :, cols]`` of a [N,H,W] tensor; a strided slice (several times faster) when both index
    sequences are evenly spaced, as for a whole factor."""
    slices = []
    for idx in (rows, cols):
        step = int(idx[1] - idx[0]) if idx.numel() > 1 else 1
        start = int(idx[0])
        if step < 1 or not torch.equal(idx, torch.arange(start, start + step * idx.numel(), step, device=idx.device)):
            return x[:, rows[:, None], cols]
        slices.append(slice(start, start + step * idx.numel(), step))
    return x[:, slices[0], slices[1]].contiguous()


def _smaller_side(d: torch.Tensor, dim: int) -> torch.Tensor:
    """Forward differences ``d`` along ``dim`` (one shorter than the image, +-inf where they touch an invalid pixel)
    -> per pixel, whichever of its two one-sided differences has the smaller magnitude, so no difference spans a
    depth jump where the other side is smooth. inf where neither side exists."""
    n = d.shape[dim] + 1
    out = torch.empty(*d.shape[:dim], n, *d.shape[dim + 1:], dtype=d.dtype, device=d.device)
    fwd, bwd = d.narrow(dim, 1, n - 2), d.narrow(dim, 0, n - 2)
    torch.where(fwd.abs() < bwd.abs(), fwd, bwd, out=out.narrow(dim, 1, n - 2))
    out.narrow(dim, 0, 1).copy_(d.narrow(dim, 0, 1))
    out.narrow(dim, n - 1, 1).copy_(d.narrow(dim, n - 2, 1))
    return out


def view_cosine(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """|cos| [N,H,W] of the angle between the surface normal and the view ray, from z-depth [N,H,W] (0 = invalid)
    and K [N,3,3]; 0 where no normal can be formed (invalid pixel, or no valid neighbour along a row or a column).

    Derivatives are one-sided differences of inverse depth q = 1/z, which is affine in (u, v) on a plane, so the
    result is exact on planar surfaces. With ``X = z r``, ``r = ((u-cx)/fx, (v-cy)/fy, 1)``, the normal
    ``X_u x X_v`` is parallel to ``(A, B, 1 - x A - y B)`` with ``A = fx z q_u``, ``B = fy z q_v`` and its dot product
    with r is 1, so ``cos = 1 / (|(A, B, 1 - x A - y B)| |r|)``: no 3D points are formed.
    """
    z = depth.float()
    n, h, w = z.shape
    k = intrinsics.to(device=z.device, dtype=torch.float32)
    fx, fy = k[:, 0, 0, None, None], k[:, 1, 1, None, None]
    x = (torch.arange(w, device=z.device, dtype=torch.float32)[None, None, :] + 0.5 - k[:, 0, 2, None, None]) / fx
    y = (torch.arange(h, device=z.device, dtype=torch.float32)[None, :, None] + 0.5 - k[:, 1, 2, None, None]) / fy
    q = z.reciprocal()  # inf where z == 0: differences touching an invalid pixel become +-inf or nan
    a = _smaller_side((q[..., 1:] - q[..., :-1]).nan_to_num_(nan=math.inf), 2).mul_(z).mul_(fx)
    b = _smaller_side((q[..., 1:, :] - q[..., :-1, :]).nan_to_num_(nan=math.inf), 1).mul_(z).mul_(fy)
    c = x * a
    c.addcmul_(y, b).neg_().add_(1.0)
    s = a.square_().add_(b.square_()).add_(c.square_())
    s.mul_(x.square() + y.square() + 1.0)
    cos = s.rsqrt_().nan_to_num_(nan=0.0, posinf=0.0).clamp_(0.0, 1.0)
    return cos.masked_fill_(z <= 0, 0.0)


def grazing_confidence(depth: torch.Tensor, intrinsics: torch.Tensor, full_deg: float = 60.0,
                       zero_deg: float = 85.0) -> torch.Tensor:
    """1 where the surface faces the camera within ``full_deg`` of the view ray, 0 beyond ``zero_deg`` (and where
    there is no surface), smooth in between."""
    return smoothstep(math.cos(math.radians(zero_deg)), math.cos(math.radians(full_deg)),
                      view_cosine(depth, intrinsics))


def depth_edges(depth: torch.Tensor, intrinsics: torch.Tensor, max_slope: float = 8.0) -> torch.Tensor:
    """Pixels on a depth discontinuity [N,H,W] bool, from z-depth [N,H,W] (0 = invalid): valid pixels next to an
    invalid one (silhouettes), or whose depth differs from a 4-neighbour's by more than ``max_slope`` pixel
    footprints (z / f), i.e. more than a surface inclined at atan(max_slope) (83 deg for 8) would give. This is
    resolution-independent. The frame edge is not a discontinuity."""
    z = depth.float()
    k = intrinsics.to(device=z.device, dtype=torch.float32)
    edges = torch.zeros(z.shape, dtype=torch.bool, device=z.device)
    for dim, focal in ((2, k[:, 0, 0]), (1, k[:, 1, 1])):
        n = z.shape[dim]
        za, zb = z.narrow(dim, 0, n - 1), z.narrow(dim, 1, n - 1)
        # a neighbour at z = 0 (invalid) always counts: its min is 0
        jump = (za - zb).abs_() > torch.minimum(za, zb).mul_((max_slope / focal)[:, None, None])
        edges.narrow(dim, 0, n - 1).logical_or_(jump)
        edges.narrow(dim, 1, n - 1).logical_or_(jump)
    return edges.logical_and_(z > 0)


def edge_confidence(depth: torch.Tensor, intrinsics: torch.Tensor, radius: int = 8,
                    max_slope: float = 8.0) -> torch.Tensor:
    """0 on depth discontinuities and off the surface, 1 farther than ``radius`` px from them, smooth in between."""
    return feather((depth > 0) & ~depth_edges(depth, intrinsics, max_slope), radius)


def combine(signals: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted geometric mean of per-pixel confidences; signals with weight 0 (or absent) are ignored.

    With every weight 0 the result is 1 everywhere. Negative weights are refused.
    """
    for name in weights:
        if name not in signals:
            raise ValueError(f"unknown confidence signal {name!r}; known: {', '.join(signals)}")
    used = {}
    for name, w in weights.items():
        w = float(w)
        if w < 0 or not math.isfinite(w):
            raise ValueError(f"weight of the {name} signal must be a finite number >= 0, got {w}")
        if w > 0:
            used[name] = w
    total = sum(used.values())
    out = None
    for name, w in used.items():
        term = signals[name].clamp(0.0, 1.0)
        if w != total:
            term = term.pow_(w / total)
        out = term if out is None else out.mul_(term)
    if out is None:
        return torch.ones_like(next(iter(signals.values())))
    return out


def trusted(signals: dict[str, torch.Tensor], weights: dict[str, float], threshold: float) -> torch.Tensor:
    """``combine(signals, weights) >= threshold`` as a bool map, without fractional powers when the weights are
    whole numbers: the weighted geometric mean clears t exactly when prod c_i^w_i >= t^(sum w_i)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    ws = {name: float(w) for name, w in weights.items()}
    if not all(w.is_integer() and 0 <= w <= 8 for w in ws.values()) or sum(ws.values()) == 0:
        return combine(signals, weights) >= threshold
    for name in ws:
        if name not in signals:
            raise ValueError(f"unknown confidence signal {name!r}; known: {', '.join(signals)}")
    prod = None
    for name, w in ws.items():
        for _ in range(int(w)):
            term = signals[name].clamp(0.0, 1.0)
            prod = term if prod is None else prod.mul_(term)
    return prod >= threshold ** sum(ws.values())


def blend_weights(confidence: torch.Tensor, alpha: torch.Tensor, threshold: float = 0.6,
                  feather_radius: int = 6) -> torch.Tensor:
    """Per-pixel weight of the enhanced image [N,H,W]: pixels with confidence >= ``threshold`` inside the render
    (alpha > 0) are trusted; the trusted region is feathered inwards over ``feather_radius`` px. Exactly 0 on
    untrusted and background pixels, exactly 1 deeper than ``feather_radius`` inside the trusted region."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if feather_radius < 0:
        raise ValueError(f"feather radius must be >= 0, got {feather_radius}")
    return feather((confidence >= threshold) & (alpha > 0), int(feather_radius))


def confidence_signals(alpha: torch.Tensor, depth: DepthMaps, cameras: Cameras, *, edge_radius: int = 8,
                       max_slope: float = 8.0, opacity_low: float = 0.5, grazing_full_deg: float = 60.0,
                       grazing_zero_deg: float = 85.0) -> dict[str, torch.Tensor]:
    """All per-signal confidences [N,H,W] for alpha [N,H,W]; depth and cameras are brought to alpha's size."""
    _check_inputs(alpha, depth, cameras)
    d, k = depth_at_size(depth, cameras, tuple(alpha.shape[-2:]))
    z = d.depth.to(alpha.device)
    return {
        "opacity": opacity_confidence(alpha, opacity_low),
        "edge": edge_confidence(z, k, edge_radius, max_slope),
        "grazing": grazing_confidence(z, k, grazing_full_deg, grazing_zero_deg),
    }


def _check_inputs(alpha: torch.Tensor, depth: DepthMaps, cameras: Cameras) -> None:
    if alpha.dim() != 3:
        raise ValueError(f"alpha must be [N,H,W], got shape {list(alpha.shape)}")
    n = alpha.shape[0]
    if depth.depth.shape[0] != n or len(cameras) != n:
        raise ValueError(f"{n} views but {depth.depth.shape[0]} depth maps and {len(cameras)} cameras")


def _crop_box(mask: torch.Tensor, margin: int) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the union over views of ``mask`` [N,H,W], grown by ``margin``; None if empty."""
    rows = mask.any(dim=2).any(dim=0).nonzero()
    if rows.numel() == 0:
        return None
    cols = mask.any(dim=1).any(dim=0).nonzero()
    h, w = mask.shape[-2:]
    return (max(0, int(rows[0]) - margin), min(h, int(rows[-1]) + 1 + margin),
            max(0, int(cols[0]) - margin), min(w, int(cols[-1]) + 1 + margin))


def confidence_weights(alpha: torch.Tensor, depth: DepthMaps, cameras: Cameras, *, threshold: float = 0.6,
                       feather_radius: int = 6, weights: dict[str, float] | None = None, edge_radius: int = 8,
                       work_size: int | None = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[int, int]]:
    """Blend weight of the enhanced views at the working size, the per-signal confidences it came from, and that
    working size (h, w). Upsample the weight with :func:`upsample_weight`.

    Radii are in pixels of alpha's resolution. When alpha's longer side exceeds ``work_size`` everything is computed
    at that size (depth resampled nearest, alpha min-pooled, radii scaled up to whole pixels); ``None`` works at
    full resolution. Work is restricted to the union box of the views' foreground plus a margin, which changes no
    value (every operation looks at most the margin away); outside it weight and signals are 0.

    On the CPU the views go in small groups (:func:`glimpse.threads.view_groups`) over
    :func:`glimpse.threads.map_views`: each view's values depend on that view alone, so the groups give what one
    batch gives.
    """
    _check_inputs(alpha, depth, cameras)
    n, h, w = alpha.shape
    scale = 1.0
    if work_size is not None and max(h, w) > work_size:
        scale = work_size / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    edge_r, feather_r = max(1, math.ceil(edge_radius * scale)), math.ceil(feather_radius * scale)
    trust_weights = DEFAULT_WEIGHTS if weights is None else weights
    weight = torch.zeros(n, *size, dtype=torch.float32, device=alpha.device)
    signals = {name: torch.zeros_like(weight) for name in SIGNALS}

    def group(views: slice) -> None:
        a = alpha[views].float()
        if size != (h, w):  # each working pixel is as opaque as its least opaque pixel: trust never grows outwards
            a = min_pool(a, size)
        d, k = depth_at_size(depth.select(views), select_cameras(cameras, range(n)[views]), size)
        z = d.depth.to(a.device)
        box = _crop_box((a > 0) | (z > 0), edge_r + feather_r + 2)
        if box is None:
            return
        t, b, le, r = box
        a_c, z_c = a[:, t:b, le:r], z[:, t:b, le:r]
        k_c = pad_intrinsics(k, -le, -t)
        crop_signals = {
            "opacity": opacity_confidence(a_c),
            "edge": edge_confidence(z_c, k_c, edge_r),
            "grazing": grazing_confidence(z_c, k_c),
        }
        weight[views, t:b, le:r] = feather(trusted(crop_signals, trust_weights, threshold) & (a_c > 0), feather_r)
        for name, s in crop_signals.items():
            signals[name][views, t:b, le:r] = s

    map_views(group, view_groups(n, alpha.device), alpha.device)
    return weight, signals, size


def min_pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N,H,W] -> [N,h,w]: the minimum over each cell. For whole factors as elementwise minima of strided views
    (several times faster on the CPU than pooling, which needs a negated copy besides), else adaptive pooling."""
    (h, w), (sh, sw) = x.shape[-2:], size
    fh, fw = h // sh, w // sw
    if fh * sh != h or fw * sw != w:
        return -F.adaptive_max_pool2d(-x[:, None], size)[:, 0]
    rows = x[:, 0::fh]
    for i in range(1, fh):
        rows = torch.minimum(rows, x[:, i::fh])
    out = rows[..., 0::fw]
    for j in range(1, fw):
        out = torch.minimum(out, rows[..., j::fw])
    return out.contiguous()


def upsample_weight(weight: torch.Tensor, alpha: torch.Tensor, opacity_low: float = 0.5,
                    box: tuple[slice, slice] | None = None) -> torch.Tensor:
    """A working-size weight [h,w] (or [N,h,w]) -> alpha's size: bilinear, snapped to exactly 1 within 1e-6, and
    exactly 0 where alpha is at most ``opacity_low`` (no opacity confidence; background stays the original's).
    Bilinear interpolation of exact zeros stays exactly 0, so untrusted regions stay untouched.

    With ``box`` (rows, cols of alpha's size, e.g. from :func:`nonzero_box`), only that part of a [h,w] weight is
    made and returned, with the same values."""
    size = tuple(alpha.shape[-2:])
    if box is not None:
        return _upsample_box(weight, alpha, opacity_low, box)
    if tuple(weight.shape[-2:]) != size:
        batched = weight.dim() == 3
        w = weight if batched else weight[None]
        w = _snap_to_one(F.interpolate(w[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
        weight = w if batched else w[0]
    else:
        weight = weight.clone()
    return weight.masked_fill_(alpha <= opacity_low, 0.0)


def _upsample_box(weight: torch.Tensor, alpha: torch.Tensor, opacity_low: float,
                  box: tuple[slice, slice]) -> torch.Tensor:
    """:func:`upsample_weight` inside ``box`` only. For power-of-two factors the source rows and columns under the
    box (plus one on each side) are interpolated alone: the source coordinates of the box's pixels are then the whole
    map's, exact binary fractions (the crop's clamped first and last rows fall outside the box), so the values are
    the whole map's up to the last bit (torch's kernel rounds its vectorised and scalar lanes differently, and which
    lane a pixel takes depends on where its row starts). A view's box depends on that view's weight alone, so the
    result does not depend on the other views or on chunking. Other factors interpolate the whole map."""
    (big_h, big_w), (h, w) = alpha.shape[-2:], weight.shape[-2:]
    fy, fx = big_h // h, big_w // w
    if (big_h, big_w) == (h, w) or fy * h != big_h or fx * w != big_w or fy & (fy - 1) or fx & (fx - 1):
        return upsample_weight(weight, alpha, opacity_low)[box]
    rows, cols = box
    r0, r1 = max(0, rows.start // fy - 1), min(h, -(-rows.stop // fy) + 1)
    c0, c1 = max(0, cols.start // fx - 1), min(w, -(-cols.stop // fx) + 1)
    part = F.interpolate(weight[None, None, r0:r1, c0:c1], size=((r1 - r0) * fy, (c1 - c0) * fx), mode="bilinear",
                         align_corners=False)[0, 0]
    part = part[rows.start - r0 * fy:rows.stop - r0 * fy, cols.start - c0 * fx:cols.stop - c0 * fx]
    return _snap_to_one(part).masked_fill_(alpha[box] <= opacity_low, 0.0)


def _snap_to_one(weight: torch.Tensor) -> torch.Tensor:
    """Interpolated weights within 1e-6 of 1 set to exactly 1, in place (interpolating ones rounds below 1)."""
    return weight.masked_fill_(weight > 1.0 - 1e-6, 1.0)


def nonzero_box(weight: torch.Tensor, size: tuple[int, int] | None = None) -> tuple[slice, slice] | None:
    """(rows, cols) slices of the box holding every nonzero of a [h,w] map, mapped to ``size`` (h, w) with a margin
    of one source pixel so that bilinear upsampling is 0 outside it; None when all zero."""
    rows, cols = weight.any(dim=1).nonzero(), weight.any(dim=0).nonzero()
    if rows.numel() == 0:
        return None
    h, w = weight.shape
    big_h, big_w = size if size is not None else (h, w)
    sy, sx = big_h / h, big_w / w
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    if (big_h, big_w) != (h, w):
        r0, r1, c0, c1 = r0 - 1, r1 + 1, c0 - 1, c1 + 1
    return (slice(max(0, math.floor(r0 * sy)), min(big_h, math.ceil(r1 * sy))),
            slice(max(0, math.floor(c0 * sx)), min(big_w, math.ceil(c1 * sx))))

"""Do the views of a set still agree with each other? Scores from the renderer's depth and cameras.

- :mod:`glimpse.warp`: for view pairs (i, i+1) and (i, i+2) around the ring, view j warped into view i with the
  renderer's depth and cameras, and their colour errors (PSNR, MAE) where both see the same surface.
- :func:`colour_stats` / :func:`colour_drift`: CIE Lab mean and spread inside the mask, per view, against the set's
  median.
- :func:`sharpness`: variance of the Laplacian of luma inside the (eroded) mask; enhanced over input is the gain.
- :func:`score_views`: all of it as one JSON-able dict.

Views are IMAGE-like float tensors [N,H,W,C] in 0..1 (straight, not premultiplied colour; channels beyond 3 are
ignored), masks are [N,H,W] (alpha; >= 0.5 is foreground).
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from .cameras import pad_intrinsics, scale_intrinsics
from .confidence import depth_at_size, take_pixels
from .threads import map_views, single_threaded
from .types import Cameras, DepthMaps
from .warp import MIN_PIXELS, PairWarp, pair_errors, pair_scores, warp_geometry


def foreground(views: torch.Tensor, masks: torch.Tensor | None, depth: DepthMaps | None = None) -> torch.Tensor:
    """Bool [N,H,W]: mask >= 0.5 (all pixels without a mask), and valid depth when depth is given (same size)."""
    n, h, w = views.shape[:3]
    fg = torch.ones(n, h, w, dtype=torch.bool, device=views.device) if masks is None else masks >= 0.5
    if depth is not None:
        fg = fg & depth.valid.to(fg.device)
    return fg


_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]])
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in 0..1 [...,3] -> CIE L*a*b* (D65) [...,3]."""
    rgb = rgb.float().clamp(0.0, 1.0)
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).pow(2.4))
    xyz = lin @ (_RGB_TO_XYZ / _WHITE_D65[:, None]).T.to(rgb.device)
    eps = (6.0 / 29.0) ** 3
    f = torch.where(xyz > eps, xyz.clamp_min(eps).pow(1.0 / 3.0), xyz / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    return torch.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])],
                       dim=-1)


def colour_stats(views: torch.Tensor, fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab mean and standard deviation inside ``fg`` per view: ([N,3], [N,3]); NaN for a view with no foreground."""
    def one(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # gathered plane by plane into a contiguous [P,3]: score's working views are channel-first underneath, and a
        # boolean gather of their channel-last view, and the Lab passes over its result, were 1.5x slower
        inside = fg[i].reshape(-1).nonzero().squeeze(1)
        planes = views[i][..., :3].permute(2, 0, 1).reshape(3, -1)
        lab = srgb_to_lab(planes.index_select(1, inside).T.contiguous()).double()
        if lab.shape[0] == 0:
            return torch.full((3,), math.nan, dtype=torch.float64), torch.full((3,), math.nan, dtype=torch.float64)
        return lab.mean(0).cpu(), lab.std(0, correction=0).cpu()

    means, stds = zip(*map_views(one, range(views.shape[0]), views.device))
    return torch.stack(means), torch.stack(stds)


def colour_drift(means: torch.Tensor, stds: torch.Tensor, ref_means: torch.Tensor | None = None,
                 ref_stds: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-view colour drift from the rest of the set: (Delta E76 of the mean Lab, distance of the Lab spread).

    Without reference statistics a view's mean (spread) is compared with the median over views of the means
    (spreads). Views of an object that is differently coloured on each side differ legitimately, so when the
    reference (input) views' statistics are given, what is compared is each view's *change*, enhanced minus input,
    against the median change over the set: a grading shared by every view is not drift, one view turning a different
    hue is.
    """
    if ref_means is not None:
        means = means - ref_means
        stds = stds - ref_stds
    return (means - means.nanmedian(dim=0).values).norm(dim=-1), (stds - stds.nanmedian(dim=0).values).norm(dim=-1)


def sharpness(views: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of luma (Rec. 601 weights on the 0..1 values) over pixels whose whole
    stencil is foreground, per view: float64 [N]; NaN for a view with no such pixel."""
    return _sharpness(views, _stencils(fg))


def _stencils(fg: torch.Tensor) -> list[tuple[tuple[slice, slice], torch.Tensor] | None]:
    """Per view of ``fg`` [N,H,W]: the mask's box and, inside it, where the whole Laplacian stencil is foreground
    (None for an empty mask). The enhanced and the reference views share them."""
    def one(i: int) -> tuple[tuple[slice, slice], torch.Tensor] | None:
        rows, cols = fg[i].any(dim=1).nonzero(), fg[i].any(dim=0).nonzero()
        if rows.numel() == 0:
            return None
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        m = fg[i][box]
        return box, m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]

    return map_views(one, range(fg.shape[0]), fg.device)


def _sharpness(views: torch.Tensor, stencils: list[tuple[tuple[slice, slice], torch.Tensor] | None]) -> torch.Tensor:
    def one(i: int) -> torch.Tensor:
        if stencils[i] is None:
            return torch.tensor(math.nan, dtype=torch.float64)
        box, inner = stencils[i]
        # three planar passes: a matrix-vector product over a trailing axis of 3 was 6x slower on the CPU
        rgb = views[i][box][..., :3].float().unbind(-1)
        y = rgb[0] * 0.299
        y.add_(rgb[1] * 0.587).add_(rgb[2] * 0.114)
        lap = 4.0 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        vals = lap[inner].double()
        return vals.var(correction=0).cpu() if vals.numel() > 1 else torch.tensor(math.nan, dtype=torch.float64)

    return torch.stack(map_views(one, range(views.shape[0]), views.device))


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _consistency(views: torch.Tensor, geometry: list[PairWarp], min_pixels: int) -> dict:
    pairs = pair_scores(pair_errors(views, geometry), min_pixels)
    return {"psnr": _mean(p["psnr"] for p in pairs), "mae": _mean(p["mae"] for p in pairs),
            "pairs_scored": sum(p["psnr"] is not None for p in pairs), "pairs": pairs}


def _downsample(x: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor | None:
    """Box-filter [N,H,W] or [N,H,W,C] down to ``size``: strided sums per view for integer factors (several times
    faster than area interpolation of a channels-last batch), area interpolation otherwise."""
    if x is None or tuple(x.shape[1:3]) == size:
        return x
    n, h, w = x.shape[:3]
    fh, fw = h // size[0], w // size[1]
    channels_last = x.dim() == 4
    if fh * size[0] == h and fw * size[1] == w:
        # colour accumulates channel-first: over a trailing axis of 3 every op would loop 3 elements at a time
        out = torch.empty((n, *x.shape[3:], *size), dtype=torch.float32, device=x.device)

        def one(i: int) -> None:
            xi, acc = (x[i].permute(2, 0, 1) if channels_last else x[i]), out[i]
            acc.copy_(xi[..., 0::fh, 0::fw])
            for a in range(fh):
                for b in range(fw):
                    if a or b:
                        acc.add_(xi[..., a::fh, b::fw])
            acc.mul_(1.0 / (fh * fw))

        map_views(one, range(n), x.device)
        return out.permute(0, 2, 3, 1) if channels_last else out
    t = x.float().permute(0, 3, 1, 2) if channels_last else x.float()[:, None]
    t = F.interpolate(t, size=size, mode="area")
    return t.permute(0, 2, 3, 1) if channels_last else t[:, 0]


def _aligned_box(mask: torch.Tensor, f: int, margin: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Rows and columns [start, end) of a [H,W] mask's box grown by ``margin``, with start and length multiples of
    ``f`` (the whole frame's largest such box when the mask is empty)."""
    out = []
    for dim in (1, 0):
        length = mask.shape[1 - dim]
        idx = mask.any(dim=dim).nonzero()
        lo, hi = (0, length) if idx.numel() == 0 else (int(idx[0]) - margin, int(idx[-1]) + 1 + margin)
        lo = max(0, lo // f * f)
        hi = min(-(-hi // f) * f, lo + (length - lo) // f * f)
        out.append((lo, max(hi, lo + f) if length - lo >= f else hi))
    return out[0], out[1]


def score_views(views: torch.Tensor, masks: torch.Tensor | None = None, depth: DepthMaps | None = None,
                cameras: Cameras | None = None, reference: torch.Tensor | None = None, *,
                depth_tolerance: float = 0.01, edge_margin: int = 1, min_pixels: int = MIN_PIXELS,
                work_size: int | None = 512) -> dict:
    """All scores of a view set as a JSON-able dict.

    ``views`` [N,H,W,C] (enhanced), ``masks`` [N,H,W] alpha or None (whole frame), ``depth``/``cameras`` of the set
    (depth at any size; it is resampled nearest and K scaled) or None, ``reference`` [N,H,W,C] the input renders or
    None. Keys: ``consistency`` ({psnr, mae} means over the ring pairs (i, i+1), (i, i+2); per pair in ``pairs``)
    or None without depth or cameras, ``colour_drift`` (mean over views of :func:`colour_drift`'s Delta E; of the
    change from the reference when given), ``colour_drift_max``, ``sharpness`` (mean Laplacian variance),
    ``sharpness_gain`` (geometric mean over views of enhanced over reference Laplacian variance; None without
    reference), ``reference`` (the reference views' own consistency: the ceiling the enhanced set is compared
    against), ``per_view``, and ``notes`` (what could not be computed and why).

    Warps and colour statistics run at ``work_size`` (longer side; views and masks area-downsampled, depth nearest)
    when the views are larger; sharpness always at full resolution. ``edge_margin`` is in pixels of the depth maps
    (see :func:`warp_geometry`). Enhanced and reference views share one warp geometry. CPU work runs
    single-threaded (:mod:`glimpse.threads`).
    """
    with single_threaded(views.device):
        return _score_views(views, masks, depth, cameras, reference, depth_tolerance, edge_margin, min_pixels,
                            work_size)


def _score_views(views, masks, depth, cameras, reference, depth_tolerance, edge_margin, min_pixels, work_size):
    if views.dim() != 4 or views.shape[-1] < 3:
        raise ValueError(f"views must be [N,H,W,C] with C >= 3, got {list(views.shape)}")
    n, h, w = views.shape[:3]
    if masks is not None and tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks are {list(masks.shape)} but the views are {[n, h, w]} ([N,H,W])")
    if reference is not None and tuple(reference.shape[:3]) != (n, h, w):
        raise ValueError(f"reference views are {list(reference.shape[:3])} but the views are {[n, h, w]} ([N,H,W])")
    notes: list[str] = []
    have_depth = depth is not None and cameras is not None
    if have_depth:
        if depth.depth.shape[0] != n or len(cameras) != n:
            raise ValueError(f"{n} views but {depth.depth.shape[0]} depth maps and {len(cameras)} cameras")
        dh, dw = depth.depth.shape[-2:]
        depth_px = max(1.0, h / dh, w / dw)  # view pixels per depth pixel
    else:
        notes.append("consistency not computed: the set has no " + ("depth" if depth is None else "cameras"))
    # colour and sharpness statistics: inside the mask (or, without one, where there is depth)
    if masks is not None or not have_depth:
        fg = foreground(views, masks)
    else:
        fg = depth_at_size(depth, cameras, (h, w))[0].valid.to(views.device)
    # Work on the union box of the foreground (the margin makes cropping change no value), box-filtered by a whole
    # factor f, with depth sampled nearest at the working pixels' centres.
    f = max(1, math.ceil(max(h, w) / work_size)) if work_size else 1
    margin = f * (edge_margin * math.ceil(depth_px) + 2) if have_depth else f
    (r0, r1), (c0, c1) = _aligned_box(fg.any(dim=0), f, margin)
    size = ((r1 - r0) // f, (c1 - c0) // f)

    def crop(x):
        return None if x is None else _downsample(x[:, r0:r1, c0:c1], size)

    views_w, masks_w, reference_w = crop(views), crop(masks), crop(reference)
    geometry = depth_w = None
    if have_depth:
        dev = depth.depth.device
        rows = ((r0 + torch.arange(size[0], device=dev) * f + f / 2) * (dh / h)).long().clamp_(max=dh - 1)
        cols = ((c0 + torch.arange(size[1], device=dev) * f + f / 2) * (dw / w)).long().clamp_(max=dw - 1)
        z = take_pixels(depth.depth, rows, cols).float()
        valid = take_pixels(depth.valid, rows, cols) & (z > 0) & torch.isfinite(z)
        depth_w = DepthMaps(depth=torch.where(valid, z, 0.0).to(views.device), valid=valid.to(views.device))
        k = scale_intrinsics(cameras.intrinsics, cameras.image_size, (h, w))
        k = scale_intrinsics(pad_intrinsics(k, -c0, -r0), (r1 - r0, c1 - c0), size)
        cams_w = replace(cameras, intrinsics=k, image_size=size)
        edge_margin = edge_margin * max(1, math.ceil(depth_px / f))
        geometry = warp_geometry(depth_w, cams_w, masks_w, depth_tolerance=depth_tolerance, edge_margin=edge_margin)
    fg_w = foreground(views_w, masks_w, depth_w if masks is None else None)

    stencils = _stencils(fg)

    def scores(v: torch.Tensor, v_w: torch.Tensor) -> tuple:
        cons = _consistency(v_w, geometry, min_pixels) if geometry is not None else None
        return cons, *colour_stats(v_w, fg_w), _sharpness(v, stencils)

    cons, means, stds, sharp = scores(views, views_w)
    out: dict = {"views": n, "size": [h, w], "consistency": None}
    size = (math.ceil(h / f), math.ceil(w / f))  # the working size of the whole frame
    if cons is not None:
        out["consistency"] = {"psnr": cons["psnr"], "mae": cons["mae"], "pairs_scored": cons["pairs_scored"],
                              "pairs_total": len(cons["pairs"]), "work_size": list(size),
                              "depth_tolerance": depth_tolerance, "edge_margin_px": edge_margin}
    gains = shift = None
    if reference is None:
        drift, spread = colour_drift(means, stds)
    else:
        r_cons, r_means, r_stds, r_sharp = scores(reference, reference_w)
        drift, spread = colour_drift(means, stds, r_means, r_stds)
        gains = sharp / r_sharp
        shift = (means - r_means).norm(dim=-1)
    out["colour_drift"] = _mean(_finite(x) for x in drift)
    out["colour_drift_max"] = max((x for x in (_finite(d) for d in drift) if x is not None), default=None)
    out["colour_drift_basis"] = "set median" if reference is None else "change from reference vs set median change"
    out["sharpness"] = _mean(_finite(x) for x in sharp)
    out["sharpness_gain"] = None
    out["reference"] = None
    if reference is not None:
        logs = [math.log(g) for g in gains.tolist() if math.isfinite(g) and g > 0]
        out["sharpness_gain"] = math.exp(sum(logs) / len(logs)) if logs else None
        out["colour_shift_vs_reference"] = _mean(_finite(x) for x in shift)
        out["reference"] = {"consistency": None if r_cons is None else {"psnr": r_cons["psnr"], "mae": r_cons["mae"]},
                            "sharpness": _mean(_finite(x) for x in r_sharp)}
    per_view = []
    for i in range(n):
        entry = {"view": i, "colour_drift": _finite(drift[i]), "spread_drift": _finite(spread[i]),
                 "lab_mean": [_finite(x) for x in means[i]], "lab_std": [_finite(x) for x in stds[i]],
                 "sharpness": _finite(sharp[i]), "foreground_pixels": int(fg[i].sum())}
        if cons is not None:
            mine = [p for p in cons["pairs"] if i in (p["i"], p["j"])]
            entry["psnr"] = _mean(p["psnr"] for p in mine)
            entry["mae"] = _mean(p["mae"] for p in mine)
        if reference is not None:
            entry["sharpness_gain"] = _finite(gains[i])
            entry["colour_shift_vs_reference"] = _finite(shift[i])
        per_view.append(entry)
    out["per_view"] = per_view
    if cons is not None:
        out["pairs"] = cons["pairs"]
    out["notes"] = notes
    return out


__all__ = ["colour_drift", "colour_stats", "foreground", "score_views", "sharpness", "srgb_to_lab"]

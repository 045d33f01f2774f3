"""Do the views of a set still agree with each other? Scores from the renderer's depth and cameras.

- :func:`warp_errors`: for view pairs (i, i+1) and (i, i+2) around the ring, every foreground pixel of view i is
  unprojected with view i's depth and projected into view j; view j's colour is sampled there (bilinear). A pixel is
  compared only if it lands on view j's foreground and passes the occlusion test: its projected z agrees with view
  j's own depth at that point (so surfaces that view j does not see are left out).
- :func:`colour_stats` / :func:`colour_drift`: CIE Lab mean and spread inside the mask, per view, against the set's
  median.
- :func:`sharpness`: variance of the Laplacian of luma inside the (eroded) mask; enhanced over input is the gain.
- :func:`score_views`: all of it as one JSON-able dict.

Views are IMAGE-like float tensors [N,H,W,C] in 0..1 (straight, not premultiplied colour; channels beyond 3 are
ignored), masks are [N,H,W] (alpha; >= 0.5 is foreground).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .cameras import project
from .confidence import depth_at_size, depth_edges
from .feather import dilate
from .types import Cameras, DepthMaps

PSNR_CAP = 100.0  # dB, reported for pairs whose colours agree exactly (MSE 0)
MIN_PIXELS = 16  # a pair with fewer comparable pixels has no score
_FAR = 1e6  # stands in for "no surface" in the depth that is sampled, so any background tap fails the depth test


def ring_pairs(n: int, offsets: tuple[int, ...] = (1, 2)) -> list[tuple[int, int]]:
    """(i, j) pairs with j = (i + offset) mod n, in order, without self pairs or repeats."""
    pairs: list[tuple[int, int]] = []
    for k in offsets:
        for i in range(n):
            j = (i + k) % n
            if j != i and (i, j) not in pairs:
                pairs.append((i, j))
    return pairs


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB for colours in 0..1, capped at :data:`PSNR_CAP`."""
    return PSNR_CAP if mse <= 10.0 ** (-PSNR_CAP / 10.0) else -10.0 * math.log10(mse)


def foreground(views: torch.Tensor, masks: torch.Tensor | None, depth: DepthMaps | None = None) -> torch.Tensor:
    """Bool [N,H,W]: mask >= 0.5 (all pixels without a mask), and valid depth when depth is given (same size)."""
    n, h, w = views.shape[:3]
    fg = torch.ones(n, h, w, dtype=torch.bool, device=views.device) if masks is None else masks >= 0.5
    if depth is not None:
        fg = fg & depth.valid.to(fg.device)
    return fg


def warp_errors(views: torch.Tensor, depth: DepthMaps, cameras: Cameras, masks: torch.Tensor | None = None, *,
                pairs: list[tuple[int, int]] | None = None, depth_tolerance: float = 0.01, edge_margin: int = 1,
                keep_maps: bool = False) -> list[dict]:
    """Colour errors of every pair (i, j): view j warped into view i (see the module docstring).

    ``depth`` must be at the views' size (see :func:`glimpse.confidence.depth_at_size`) and ``cameras`` have K for
    it. A pixel passes the occlusion test when ``|z_ij - z_j| <= depth_tolerance * z_ij`` (z_ij: its z in camera j;
    z_j: view j's depth sampled bilinearly there, with background counted as infinitely far). Pixels within
    ``edge_margin`` px of a depth discontinuity or silhouette (:func:`glimpse.confidence.depth_edges`) are left out in
    both views: a rasteriser mixes the colours of the two surfaces there (anti-aliasing) while the depth describes
    one, so they disagree even between perfectly consistent renders. Returns per pair
    ``{"i", "j", "pixels", "sse", "sae", "channels", "candidates"}`` (sums over compared pixels and channels;
    candidates = foreground pixels of view i); with ``keep_maps`` also ``"compared"`` (bool [H,W]) and ``"warped"``
    ([H,W,3], view j's colour at each compared pixel of view i).
    """
    n, h, w = views.shape[:3]
    c = min(3, views.shape[-1])
    if tuple(depth.depth.shape) != (n, h, w):
        raise ValueError(f"depth is {list(depth.depth.shape)} but the views are {[n, h, w]} ([N,H,W])")
    if len(cameras) != n:
        raise ValueError(f"{n} views but {len(cameras)} cameras")
    z = depth.depth.to(views.device).float()
    fg = foreground(views, masks, depth) & ~dilate(depth_edges(z, cameras.intrinsics), edge_margin)
    sample_depth = torch.where(fg, z, _FAR)[:, None]  # [N,1,H,W]
    k = cameras.intrinsics
    w2c = cameras.world_to_camera
    c2w = cameras.camera_to_world.to(device=views.device, dtype=torch.float32)
    pairs = ring_pairs(n) if pairs is None else pairs
    by_source: dict[int, list[int]] = {}
    for i, j in pairs:
        by_source.setdefault(i, []).append(j)
    results: dict[tuple[int, int], dict] = {}
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float32, device=views.device)
    for i, targets in by_source.items():
        rows, cols = fg[i].nonzero(as_tuple=True)
        zi = z[i, rows, cols]
        ki = k[i].to(device=views.device, dtype=torch.float32)
        x = (cols.float() + 0.5 - ki[0, 2]) / ki[0, 0] * zi
        y = (rows.float() + 0.5 - ki[1, 2]) / ki[1, 1] * zi
        pw = torch.stack([x, y, zi], dim=-1) @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        colour_i = views[i, rows, cols, :c].float()
        for j in targets:
            uv, zj = project(pw, k[j:j + 1], w2c[j:j + 1])
            grid = (uv[0] * scale - 1.0).view(1, 1, -1, 2)
            zj = zj[0]
            seen = F.grid_sample(sample_depth[j:j + 1], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False).view(-1)
            ok = (zj > 0) & ((seen - zj).abs() <= depth_tolerance * zj)
            src = views[j, ..., :c].permute(2, 0, 1)[None].float()
            sel = ok.nonzero(as_tuple=True)[0]
            warped = F.grid_sample(src, grid[:, :, sel], mode="bilinear", padding_mode="zeros",
                                   align_corners=False)[0, :, 0].T
            diff = warped - colour_i[sel]
            res = {"i": i, "j": j, "pixels": int(sel.numel()), "candidates": int(rows.numel()), "channels": c,
                   "sse": float(diff.square().sum(dtype=torch.float64)),
                   "sae": float(diff.abs().sum(dtype=torch.float64))}
            if keep_maps:
                compared = torch.zeros(h, w, dtype=torch.bool, device=views.device)
                compared[rows[sel], cols[sel]] = True
                full = torch.zeros(h, w, c, dtype=torch.float32, device=views.device)
                full[rows[sel], cols[sel]] = warped
                res["compared"], res["warped"] = compared, full
            results[(i, j)] = res
    return [results[p] for p in pairs]


def pair_scores(errors: list[dict], min_pixels: int = MIN_PIXELS) -> list[dict]:
    """Per pair {"i", "j", "pixels", "overlap", "psnr", "mae"}; psnr/mae are None below ``min_pixels``."""
    out = []
    for e in errors:
        count = e["pixels"] * e["channels"]
        ok = e["pixels"] >= min_pixels
        out.append({"i": e["i"], "j": e["j"], "pixels": e["pixels"],
                    "overlap": e["pixels"] / e["candidates"] if e["candidates"] else 0.0,
                    "psnr": psnr_from_mse(e["sse"] / count) if ok else None,
                    "mae": e["sae"] / count if ok else None})
    return out


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
    means, stds = [], []
    for i in range(views.shape[0]):
        lab = srgb_to_lab(views[i][fg[i]][:, :3]).double()
        if lab.shape[0] == 0:
            means.append(torch.full((3,), math.nan, dtype=torch.float64))
            stds.append(torch.full((3,), math.nan, dtype=torch.float64))
            continue
        means.append(lab.mean(0).cpu())
        stds.append(lab.std(0, correction=0).cpu())
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
    out = []
    luma_w = torch.tensor([0.299, 0.587, 0.114], device=views.device)
    for i in range(views.shape[0]):
        y = views[i, ..., :3].float() @ luma_w
        m = fg[i]
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
        lap = 4.0 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
        vals = lap[inner].double()
        out.append(vals.var(correction=0).cpu() if vals.numel() > 1 else torch.tensor(math.nan, dtype=torch.float64))
    return torch.stack(out)


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _consistency(views, depth, cameras, masks, depth_tolerance, edge_margin, min_pixels):
    errors = warp_errors(views, depth, cameras, masks, depth_tolerance=depth_tolerance, edge_margin=edge_margin)
    pairs = pair_scores(errors, min_pixels)
    summary = {"psnr": _mean(p["psnr"] for p in pairs), "mae": _mean(p["mae"] for p in pairs),
               "pairs_scored": sum(p["psnr"] is not None for p in pairs), "pairs": pairs}
    return summary


def score_views(views: torch.Tensor, masks: torch.Tensor | None = None, depth: DepthMaps | None = None,
                cameras: Cameras | None = None, reference: torch.Tensor | None = None, *,
                depth_tolerance: float = 0.01, edge_margin: int = 1, min_pixels: int = MIN_PIXELS) -> dict:
    """All scores of a view set as a JSON-able dict.

    ``views`` [N,H,W,C] (enhanced), ``masks`` [N,H,W] alpha or None (whole frame), ``depth``/``cameras`` of the set
    (depth at any size; it is resampled to the views' size and K scaled) or None, ``reference`` [N,H,W,C] the input
    renders or None. Keys: ``consistency`` ({psnr, mae} means over the ring pairs (i, i+1), (i, i+2), and ``pairs``)
    or None without depth or cameras, ``colour_drift`` (mean over views of :func:`colour_drift`'s Delta E; against
    the reference's when given), ``colour_drift_max``, ``sharpness`` (mean Laplacian variance), ``sharpness_gain`` (geometric
    mean over views of enhanced over reference Laplacian variance; None without reference), ``reference`` (the same
    scores of the reference views: the ceiling the enhanced set is compared against) and ``per_view``, and
    ``notes`` (what could not be computed and why). ``edge_margin`` is in pixels of the depth maps (see
    :func:`warp_errors`).
    """
    if views.dim() != 4 or views.shape[-1] < 3:
        raise ValueError(f"views must be [N,H,W,C] with C >= 3, got {list(views.shape)}")
    n, h, w = views.shape[:3]
    if masks is not None and tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks are {list(masks.shape)} but the views are {[n, h, w]} ([N,H,W])")
    if reference is not None and tuple(reference.shape[:3]) != (n, h, w):
        raise ValueError(f"reference views are {list(reference.shape[:3])} but the views are {[n, h, w]} ([N,H,W])")
    notes: list[str] = []
    geometry = None
    if depth is None or cameras is None:
        notes.append("consistency not computed: the set has no " + ("depth" if depth is None else "cameras"))
    else:
        if depth.depth.shape[0] != n or len(cameras) != n:
            raise ValueError(f"{n} views but {depth.depth.shape[0]} depth maps and {len(cameras)} cameras")
        d, k = depth_at_size(depth, cameras, (h, w))
        dh, dw = depth.depth.shape[-2:]
        edge_margin = edge_margin * max(1, math.ceil(max(h / dh, w / dw)))
        geometry = (d, Cameras(intrinsics=k, world_to_camera=cameras.world_to_camera,
                               camera_to_world=cameras.camera_to_world, azimuth_deg=cameras.azimuth_deg,
                               elevation_deg=cameras.elevation_deg, image_size=(h, w)))
    # colour and sharpness statistics: inside the mask (or, without one, where there is depth)
    fg = foreground(views, masks, geometry[0] if geometry and masks is None else None)

    def scores(v: torch.Tensor) -> tuple:
        cons = _consistency(v, *geometry, masks, depth_tolerance, edge_margin, min_pixels) if geometry else None
        return cons, *colour_stats(v, fg), sharpness(v, fg)

    cons, means, stds, sharp = scores(views)
    out: dict = {"views": n, "size": [h, w], "consistency": None}
    if cons is not None:
        out["consistency"] = {"psnr": cons["psnr"], "mae": cons["mae"], "pairs_scored": cons["pairs_scored"],
                              "pairs_total": len(cons["pairs"]), "depth_tolerance": depth_tolerance,
                              "edge_margin_px": edge_margin}
    gains = shift = None
    if reference is None:
        drift, spread = colour_drift(means, stds)
    else:
        r_cons, r_means, r_stds, r_sharp = scores(reference)
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


__all__ = ["PSNR_CAP", "colour_drift", "colour_stats", "foreground", "pair_scores", "psnr_from_mse", "ring_pairs",
           "score_views", "sharpness", "srgb_to_lab", "warp_errors"]

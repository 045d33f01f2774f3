"""View j warped into view i with view i's renderer depth and both cameras, and the colour errors of such pairs.

For view pairs (i, i+1) and (i, i+2) around the ring, every foreground pixel of view i is unprojected with view i's
depth and projected into view j; view j's colour is sampled there (bilinear). A pixel is compared only if it lands on
view j's foreground and passes the occlusion test: its projected z agrees with view j's own depth at that point (so
surfaces that view j does not see are left out). :func:`warp_geometry` finds those pixels once per set,
:func:`pair_errors` compares the colours of any number of view sets through it, :func:`pair_scores` turns the sums
into PSNR and MAE. Views are [N,H,W,C] in 0..1, masks [N,H,W] alpha (>= 0.5 is foreground).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .cameras import project
from .confidence import depth_edges
from .feather import dilate
from .threads import map_views
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


@dataclass(frozen=True)
class PairWarp:
    """Where view j is sampled for pair (i, j): the compared pixels of view i and their positions in view j."""

    i: int
    j: int
    rows: torch.Tensor  # [M] compared pixels of view i
    cols: torch.Tensor
    grid: torch.Tensor  # [1,1,M,2] their positions in view j, grid_sample coordinates
    candidates: int  # foreground pixels of view i (away from depth edges)


def warp_geometry(depth: DepthMaps, cameras: Cameras, masks: torch.Tensor | None = None, *,
                  pairs: list[tuple[int, int]] | None = None, depth_tolerance: float = 0.01,
                  edge_margin: int = 1) -> list[PairWarp]:
    """Per pair (i, j): which pixels of view i are compared and where view j is sampled for them.

    ``depth`` [N,H,W] with ``cameras`` whose K is for (H, W); ``masks`` [N,H,W] alpha (>= 0.5 is foreground) or
    None. A pixel passes the occlusion test when ``|z_ij - z_j| <= depth_tolerance * z_ij`` (z_ij: its z in camera j;
    z_j: view j's depth sampled bilinearly there, with background counted as infinitely far, so a sample touching
    background fails). Pixels within ``edge_margin`` px of a depth discontinuity or silhouette
    (:func:`glimpse.confidence.depth_edges`) are left out in both views: a rasteriser mixes the colours of the two
    surfaces there (anti-aliasing) while the depth describes one, so they disagree even between perfectly consistent
    renders. The geometry does not depend on the colours, so several colour sets share it.
    """
    z = depth.depth.float()
    n, h, w = z.shape
    if len(cameras) != n:
        raise ValueError(f"{n} depth maps but {len(cameras)} cameras")
    if masks is not None and tuple(masks.shape) != (n, h, w):
        raise ValueError(f"masks are {list(masks.shape)} but the depth maps are {[n, h, w]} ([N,H,W])")
    fg = depth.valid.to(z.device) & (z > 0)
    if masks is not None:
        fg &= masks.to(z.device) >= 0.5
    fg &= ~dilate(depth_edges(z, cameras.intrinsics), edge_margin)
    sample_depth = torch.where(fg, z, _FAR)[:, None]  # [N,1,H,W]
    k, w2c = cameras.intrinsics, cameras.world_to_camera
    c2w = cameras.camera_to_world.to(device=z.device, dtype=torch.float32)
    pairs = ring_pairs(n) if pairs is None else pairs
    by_source: dict[int, list[int]] = {}
    for i, j in pairs:
        by_source.setdefault(i, []).append(j)
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float32, device=z.device)

    def from_source(item: tuple[int, list[int]]) -> list[PairWarp]:
        i, targets = item
        found = []
        rows, cols = fg[i].nonzero(as_tuple=True)
        zi = z[i, rows, cols]
        ki = k[i].to(device=z.device, dtype=torch.float32)
        x = (cols.float() + 0.5 - ki[0, 2]) / ki[0, 0] * zi
        y = (rows.float() + 0.5 - ki[1, 2]) / ki[1, 1] * zi
        pw = torch.stack([x, y, zi], dim=-1) @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        for j in targets:
            uv, zj = project(pw, k[j:j + 1], w2c[j:j + 1])
            grid = (uv[0] * scale - 1.0).view(1, 1, -1, 2)
            zj = zj[0]
            seen = F.grid_sample(sample_depth[j:j + 1], grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False).view(-1)
            sel = ((zj > 0) & ((seen - zj).abs() <= depth_tolerance * zj)).nonzero(as_tuple=True)[0]
            found.append(PairWarp(i, j, rows[sel], cols[sel], grid[:, :, sel], int(rows.numel())))
        return found

    out = {(g.i, g.j): g for found in map_views(from_source, by_source.items(), z.device) for g in found}
    return [out[p] for p in pairs]


def pair_errors(views: torch.Tensor, geometry: list[PairWarp], keep_maps: bool = False) -> list[dict]:
    """Colour errors of each pair of ``geometry`` for views [N,H,W,C]: ``{"i", "j", "pixels", "sse", "sae",
    "channels", "candidates"}`` (sums over compared pixels and the first 3 channels); with ``keep_maps`` also
    ``"compared"`` (bool [H,W]) and ``"warped"`` ([H,W,3], view j's colour at each compared pixel of view i)."""
    n, h, w = views.shape[:3]
    c = min(3, views.shape[-1])

    def one(g: PairWarp) -> dict:
        src = views[g.j, ..., :c].permute(2, 0, 1)[None].float()
        warped = F.grid_sample(src, g.grid.to(views.device), mode="bilinear", padding_mode="zeros",
                               align_corners=False)[0, :, 0].T
        # view i's pixels gathered plane by plane (its channel-first planes are contiguous in score's working views):
        # several times faster than indexing rows, columns and channels of the channel-last view
        planes = views[g.i, ..., :c].permute(2, 0, 1).reshape(c, -1)
        diff = warped - planes.index_select(1, (g.rows * w + g.cols).to(views.device)).T.float()
        res = {"i": g.i, "j": g.j, "pixels": int(g.rows.numel()), "candidates": g.candidates, "channels": c,
               "sse": float(diff.square().sum(dtype=torch.float64)), "sae": float(diff.abs().sum(dtype=torch.float64))}
        if keep_maps:
            compared = torch.zeros(h, w, dtype=torch.bool, device=views.device)
            compared[g.rows, g.cols] = True
            full = torch.zeros(h, w, c, dtype=torch.float32, device=views.device)
            full[g.rows, g.cols] = warped
            res["compared"], res["warped"] = compared, full
        return res

    return map_views(one, geometry, views.device)


def warp_errors(views: torch.Tensor, depth: DepthMaps, cameras: Cameras, masks: torch.Tensor | None = None, *,
                pairs: list[tuple[int, int]] | None = None, depth_tolerance: float = 0.01, edge_margin: int = 1,
                keep_maps: bool = False) -> list[dict]:
    """Colour errors of every pair (i, j): view j warped into view i (:func:`warp_geometry` then
    :func:`pair_errors`). ``depth`` must be at the views' size and ``cameras`` have K for it."""
    n, h, w = views.shape[:3]
    if tuple(depth.depth.shape) != (n, h, w):
        raise ValueError(f"depth is {list(depth.depth.shape)} but the views are {[n, h, w]} ([N,H,W])")
    geometry = warp_geometry(depth, cameras, masks, pairs=pairs, depth_tolerance=depth_tolerance,
                             edge_margin=edge_margin)
    return pair_errors(views, geometry, keep_maps)


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


__all__ = ["MIN_PIXELS", "PSNR_CAP", "PairWarp", "pair_errors", "pair_scores", "psnr_from_mse", "ring_pairs",
           "warp_errors", "warp_geometry"]

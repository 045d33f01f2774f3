"""Multi-view consistency scores on synthetic scenes whose warps are known exactly.

Scenes are spheres ray-cast at SyncDreamer's 16 orbit cameras (glimpse.cameras.orbit_cameras), with colour a smooth
function of the world position, so the views agree perfectly up to rasterisation (one sample per pixel centre).
"""
import math

import pytest
import torch

from glimpse.cameras import orbit_cameras
from glimpse.consistency import colour_stats, score_views, sharpness, srgb_to_lab
from glimpse.types import DepthMaps
from glimpse.warp import PSNR_CAP, psnr_from_mse, ring_pairs, warp_errors
from tests.unit.spheres import rays, red, render, texture, visible_in

SIZE = 128
BIG = (torch.tensor([0.0, 0.0, 0.0]), 0.4)
SMALL = (torch.tensor([0.55, 0.0, 0.1]), 0.12)  # in front of the big sphere for view 0 (which looks from +x)


@pytest.fixture(scope="module")
def cams():
    return orbit_cameras(16, (SIZE, SIZE))


@pytest.fixture(scope="module")
def scene(cams):
    return render([(*BIG, texture), (*SMALL, texture)], cams)


def hue_rotate(rgb: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate colours about the grey axis (a hue shift that keeps grey grey)."""
    a = math.radians(degrees)
    k = torch.ones(3, 3) / 3
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)
    rot = math.cos(a) * torch.eye(3) + math.sin(a) * cross + (1 - math.cos(a)) * k
    return (rgb @ rot.T).clamp(0, 1)


def test_ring_pairs():
    pairs = ring_pairs(16)
    assert len(pairs) == 32 and pairs[0] == (0, 1) and (15, 0) in pairs and (14, 0) in pairs and (15, 1) in pairs
    assert ring_pairs(2) == [(0, 1), (1, 0)]
    assert ring_pairs(1) == []


def test_psnr_cap_and_values():
    assert psnr_from_mse(0.0) == PSNR_CAP
    assert psnr_from_mse(0.01) == pytest.approx(20.0)


def test_consistent_views_score_the_rasterisation_ceiling(scene, cams):
    views, alpha, depth = scene
    out = score_views(views, alpha, depth, cams, reference=views)
    cons = out["consistency"]
    print("consistent set:", cons)
    assert cons["pairs_scored"] == 32
    assert cons["psnr"] > 40.0 and cons["mae"] < 0.005
    # scored against themselves, the views are exactly their own reference
    assert out["reference"]["consistency"]["psnr"] == cons["psnr"]
    assert out["sharpness_gain"] == 1.0
    assert out["colour_shift_vs_reference"] == 0.0


def test_hue_shift_of_one_view_scores_clearly_worse(scene, cams):
    views, alpha, depth = scene
    base = score_views(views, alpha, depth, cams, reference=views)
    shifted = views.clone()
    shifted[5] = hue_rotate(views[5], 30.0)
    out = score_views(shifted, alpha, depth, cams, reference=views)
    print("hue shift:", base["consistency"]["psnr"], "->", out["consistency"]["psnr"])
    assert out["consistency"]["psnr"] < base["consistency"]["psnr"] - 3.0
    assert out["consistency"]["mae"] > 2 * base["consistency"]["mae"]
    per_view = [v["psnr"] for v in out["per_view"]]
    assert per_view.index(min(per_view)) == 5
    drift = [v["colour_drift"] for v in out["per_view"]]
    assert drift.index(max(drift)) == 5
    assert base["colour_drift_max"] == 0.0 and out["colour_drift_max"] > 1.0  # Delta E 1: just noticeable


def test_colour_cast_of_one_view_is_colour_drift(scene, cams):
    views, alpha, depth = scene
    cast = views.clone()
    cast[11] = (views[11] * torch.tensor([1.1, 1.0, 0.8])).clamp(0, 1)
    graded = (views * torch.tensor([1.1, 1.0, 0.8])).clamp(0, 1)  # the same grading on every view is not drift
    one = score_views(cast, alpha, depth, cams, reference=views)
    every = score_views(graded, alpha, depth, cams, reference=views)
    drift = [v["colour_drift"] for v in one["per_view"]]
    print("colour cast: drift of the cast view", drift[11], "max when every view is graded", every["colour_drift_max"])
    assert drift.index(max(drift)) == 11 and drift[11] > 5.0
    assert every["colour_drift_max"] < drift[11]
    assert every["colour_shift_vs_reference"] > 5.0


def test_one_pixel_shift_of_one_view_is_detected(scene, cams):
    views, alpha, depth = scene
    base = score_views(views, alpha, depth, cams)
    moved = views.clone()
    moved[9] = torch.roll(views[9], shifts=1, dims=1)  # content one pixel to the right, mask and depth unchanged
    out = score_views(moved, alpha, depth, cams)
    per_view = [v["psnr"] for v in out["per_view"]]
    others = [p for i, p in enumerate(per_view) if i not in (7, 8, 9, 10, 11)]
    print("one-pixel shift:", base["consistency"]["psnr"], "->", out["consistency"]["psnr"], per_view[9], min(others))
    assert out["consistency"]["psnr"] < base["consistency"]["psnr"] - 1.0
    assert per_view.index(min(per_view)) == 9
    assert per_view[9] < min(others) - 3.0


def test_occlusion_test_removes_pixels_hidden_in_the_other_view(cams):
    spheres = [(*BIG, texture), (*SMALL, red)]
    views, alpha, depth = render(spheres, cams)
    i, j = 2, 0  # view 0 sees the red sphere in front of part of the big one that view 2 sees
    kept = warp_errors(views, depth, cams, alpha, pairs=[(i, j)], keep_maps=True)[0]
    loose = warp_errors(views, depth, cams, alpha, pairs=[(i, j)], depth_tolerance=1e9, keep_maps=True)[0]
    # ground truth: which foreground pixels of view i are hidden behind something in view j
    fg = depth.valid[i]
    rows, cols = fg.nonzero(as_tuple=True)
    d, origin = rays(cams)
    points = origin[i] + depth.depth[i, rows, cols, None] * d[i, rows, cols]
    hidden = torch.zeros_like(fg)
    hidden[rows, cols] = ~visible_in(points, cams, j, spheres)
    assert hidden.sum() > 100  # the scene does have occluded pixels
    assert not (kept["compared"] & hidden).any()
    assert (loose["compared"] & hidden).sum() > 0.5 * hidden.sum()  # without the test they would be compared
    mse_kept = kept["sse"] / (kept["pixels"] * 3)
    mse_loose = loose["sse"] / (loose["pixels"] * 3)
    print("occlusion: psnr with test", psnr_from_mse(mse_kept), "without", psnr_from_mse(mse_loose))
    assert psnr_from_mse(mse_kept) > 35.0
    assert psnr_from_mse(mse_loose) < psnr_from_mse(mse_kept) - 10.0


def test_pairs_without_depth_fall_back_and_say_so():
    views = torch.rand(4, 32, 32, 3)
    out = score_views(views, torch.ones(4, 32, 32), None, None, reference=views)
    assert out["consistency"] is None
    assert any("depth" in note for note in out["notes"])
    assert out["sharpness_gain"] == 1.0 and out["colour_drift"] is not None and len(out["per_view"]) == 4


def test_lab_reference_values():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[1], torch.zeros(3), atol=0.01)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05)


def test_colour_stats_and_sharpness(scene):
    views, alpha, _ = scene
    fg = alpha > 0.5
    means, stds = colour_stats(views[:2], fg[:2])
    assert means.shape == (2, 3) and stds.shape == (2, 3) and torch.isfinite(means).all()
    torch.manual_seed(0)
    noise = torch.rand(3, 64, 64, 3)
    padded = torch.nn.functional.pad(noise.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate")
    blurred = torch.nn.functional.avg_pool2d(padded, 3, 1).permute(0, 2, 3, 1)
    inside = torch.zeros(3, 64, 64, dtype=torch.bool)
    inside[:, 8:56, 8:56] = True
    sharp, soft = sharpness(noise, inside), sharpness(blurred, inside)
    assert (soft < 0.2 * sharp).all()
    assert torch.isnan(sharpness(noise, torch.zeros_like(inside))).all()  # no foreground: no value


def test_shape_errors(scene, cams):
    views, alpha, depth = scene
    with pytest.raises(ValueError, match="masks are"):
        score_views(views, alpha[:, :64], depth, cams)
    with pytest.raises(ValueError, match="reference views are"):
        score_views(views, alpha, depth, cams, reference=views[:3])
    with pytest.raises(ValueError, match="16 views but 15 depth maps"):
        score_views(views, alpha, DepthMaps(depth=depth.depth[:15], valid=depth.valid[:15]), cams)


def test_scores_do_not_depend_on_empty_frame_around_the_object(cams):
    """Work is cropped to the foreground's box: padding the frame with background changes no number."""
    from glimpse.cameras import letterbox_cameras

    views, alpha, depth = render([(*BIG, texture)], cams)  # inside the frame in every view
    assert not alpha[:, [0, -1]].any() and not alpha[:, :, [0, -1]].any()
    p = 32
    big = SIZE + 2 * p
    pad = torch.nn.functional.pad
    views_p = pad(views.permute(0, 3, 1, 2), (p, p, p, p)).permute(0, 2, 3, 1)
    alpha_p = pad(alpha, (p, p, p, p))
    depth_p = DepthMaps(depth=pad(depth.depth, (p, p, p, p)), valid=pad(depth.valid, (p, p, p, p)))
    cams_p = letterbox_cameras(cams, (SIZE, SIZE), (p, p), (big, big))
    shifted = views.clone()
    shifted[5] = hue_rotate(views[5], 30.0)
    shifted_p = pad(shifted.permute(0, 3, 1, 2), (p, p, p, p)).permute(0, 2, 3, 1)
    a = score_views(shifted, alpha, depth, cams, reference=views)
    b = score_views(shifted_p, alpha_p, depth_p, cams_p, reference=views_p)
    assert [q["pixels"] for q in b["pairs"]] == [q["pixels"] for q in a["pairs"]]  # the same pixels compared
    # the same values up to float32 rounding of the shifted pixel coordinates
    assert b["consistency"]["psnr"] == pytest.approx(a["consistency"]["psnr"], abs=0.05)
    assert b["consistency"]["mae"] == pytest.approx(a["consistency"]["mae"], rel=1e-3)
    assert b["colour_drift"] == pytest.approx(a["colour_drift"], abs=1e-6)
    assert b["sharpness_gain"] == pytest.approx(a["sharpness_gain"], rel=1e-6)

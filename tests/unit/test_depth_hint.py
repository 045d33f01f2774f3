"""Depth hints on a synthetic scene ray-cast at SyncDreamer's 16 cameras: one near/far for the set, near = bright.

The scene (two off-centre spheres) is seen from a different distance in every view, so each view has its own depth
range: exactly the case where the seed's per-view min-max gives the same depth a different grey in every view.
"""
import pytest
import torch

from glimpse.cameras import orbit_cameras, pixel_centres
from glimpse.depth import (
    align_monocular,
    depth_hint,
    fit_scale_shift,
    merge_depth,
    near_far,
    normalise_jointly,
    with_set_range,
)
from glimpse.types import DepthMaps

SPHERES = [((0.30, 0.10, 0.00), 0.30), ((-0.35, -0.20, 0.10), 0.15)]


def render_spheres(cams, spheres=SPHERES) -> torch.Tensor:
    """Camera-space z [N,H,W] (float64) of the nearest sphere hit per pixel centre; 0 where no sphere is hit."""
    h, w = cams.image_size
    uv = pixel_centres(h, w, torch.float64)
    k = cams.intrinsics
    x = (uv[..., 0] - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None]
    y = (uv[..., 1] - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None]
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)  # z = 1: the ray parameter is camera z
    r = cams.camera_to_world[:, :3, :3]
    d = torch.einsum("nij,nhwj->nhwi", r, d_cam)
    o = cams.camera_to_world[:, None, None, :3, 3]
    best = torch.full(d.shape[:-1], float("inf"), dtype=torch.float64)
    for centre, radius in spheres:
        oc = o - torch.tensor(centre, dtype=torch.float64)
        a = (d * d).sum(-1)
        b = 2 * (oc * d).sum(-1)
        c = (oc * oc).sum(-1) - radius**2
        disc = b * b - 4 * a * c
        t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
        best = torch.where((disc > 0) & (t > 0) & (t < best), t, best)
    return torch.where(torch.isfinite(best), best, torch.zeros_like(best))


@pytest.fixture(scope="module")
def scene() -> DepthMaps:
    z = render_spheres(orbit_cameras(16, (96, 96))).float()
    return DepthMaps(depth=z, valid=z > 0)


def per_view_minmax_hint(depth: DepthMaps) -> torch.Tensor:
    """The seed's hint: each view normalised on its own (inverse depth, min-max over that view)."""
    out = torch.zeros_like(depth.depth)
    for i in range(depth.depth.shape[0]):
        inv = 1.0 / depth.depth[i][depth.valid[i]]
        out[i][depth.valid[i]] = (inv - inv.min()) / (inv.max() - inv.min())
    return out


def max_grey_spread_at_equal_depth(depth: DepthMaps, hint: torch.Tensor, bin_width: float = 1e-4) -> float:
    """Largest difference of hint values among pixels (of any views) whose depth falls in one narrow bin."""
    z = depth.depth[depth.valid].double()
    v = hint[depth.valid].double()
    bins = (z / bin_width).floor().long()
    order = torch.argsort(bins)
    bins, v = bins[order], v[order]
    _, counts = torch.unique_consecutive(bins, return_counts=True)
    spread = 0.0
    for group in torch.split(v, counts.tolist()):
        if group.numel() > 1:
            spread = max(spread, float(group.max() - group.min()))
    return spread


def test_scene_views_have_different_depth_ranges(scene):
    ranges = [(float(scene.depth[i][scene.valid[i]].min()), float(scene.depth[i][scene.valid[i]].max()))
              for i in range(16)]
    assert all(scene.valid[i].sum() > 200 for i in range(16))
    nears = [r[0] for r in ranges]
    assert max(nears) - min(nears) > 0.2


@pytest.mark.parametrize("mode", ["shared_inverse", "shared_linear"])
def test_nearer_pixels_are_brighter_across_the_whole_set(scene, mode):
    hint = depth_hint(scene, mode)
    assert hint.shape == (16, 96, 96, 3) and hint.dtype == torch.float32
    assert torch.equal(hint[..., 0], hint[..., 1]) and torch.equal(hint[..., 0], hint[..., 2])
    near, far = near_far(scene)
    z = scene.depth[scene.valid]
    v = hint[..., 0][scene.valid]
    order = torch.argsort(z)
    v_sorted = v[order]
    assert (v_sorted[1:] <= v_sorted[:-1] + 1e-6).all()  # monotone: nearer never darker
    inside = (z > near) & (z < far)
    assert v[inside].min() > 0.1 and v[inside].max() < 1.0
    a = (z > near) & (z < near + 0.05)
    b = (z > far - 0.05) & (z < far)
    assert v[a].min() > v[b].max() + 0.1  # and clearly brighter


def test_one_depth_gets_one_grey_in_every_view_but_not_with_per_view_minmax(scene):
    shared = depth_hint(scene)[..., 0]
    assert max_grey_spread_at_equal_depth(scene, shared) <= 1 / 255
    seed = per_view_minmax_hint(scene)
    assert max_grey_spread_at_equal_depth(scene, seed) > 0.1  # the seed's hint fails the same test


def test_background_is_zero_and_surfaces_are_not(scene):
    hint = depth_hint(scene)
    assert (hint[~scene.valid] == 0).all()
    assert (hint[scene.valid] >= 0.1 - 1e-6).all()
    assert float(hint.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["shared_inverse", "shared_linear"])
def test_device_path_matches_the_cpu_path(scene, mode):
    from glimpse.depth import _hint_torch

    near, far = near_far(scene)
    lo, hi = (1 / far, 1 / near) if mode == "shared_inverse" else (-far, -near)
    other = _hint_torch(scene, mode, near, far, lo, 0.9 / (hi - lo), 0.1, False)
    assert torch.allclose(other, depth_hint(scene, mode), atol=1e-6)


def test_a_chunk_of_views_keeps_the_set_wide_grey_levels(scene):
    full = with_set_range(scene)
    chunk = full.select(slice(4, 8))
    assert torch.equal(depth_hint(chunk), depth_hint(full)[4:8])
    # without the carried range the chunk would get its own (different) contrast
    alone = DepthMaps(depth=full.depth[4:8], valid=full.valid[4:8])
    assert not torch.allclose(depth_hint(alone), depth_hint(full)[4:8])


def test_chunks_join_back_into_the_set(scene):
    full = with_set_range(scene)
    joined = DepthMaps.cat([full.select(slice(0, 5)), full.select(slice(5, 16))])
    assert torch.equal(joined.depth, full.depth) and torch.equal(joined.valid, full.valid)
    assert (joined.near, joined.far) == (full.near, full.far)
    # chunks that carry different ranges are not one set's: the joined maps get theirs from the data
    mixed = DepthMaps.cat([full.select(slice(0, 5)), scene.select(slice(5, 16))])
    assert mixed.near is None and mixed.far is None
    assert torch.equal(depth_hint(mixed), depth_hint(scene))
    with pytest.raises(ValueError, match="no depth chunks"):
        DepthMaps.cat([])


def test_outliers_do_not_move_near_far(scene):
    z = scene.depth.clone()
    z[0, 0, :5] = 1e6  # a few far-away specks (e.g. a stray splat)
    z[1, 0, :5] = 1e-3
    noisy = DepthMaps(depth=z, valid=z > 0)
    assert near_far(noisy) == pytest.approx(near_far(scene), rel=0.02)


def test_flat_scene_and_errors():
    z = torch.zeros(2, 8, 8)
    z[:, 2:6, 2:6] = 2.0
    hint = depth_hint(DepthMaps(depth=z, valid=z > 0))
    assert hint[0, 3, 3, 0] == 1.0 and hint[0, 0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="mode"):
        depth_hint(DepthMaps(depth=z, valid=z > 0), "per_view")
    with pytest.raises(ValueError, match="no view of the set has a valid depth"):
        depth_hint(DepthMaps(depth=torch.zeros(2, 4, 4), valid=torch.zeros(2, 4, 4, dtype=torch.bool)))


def test_fit_scale_shift_ignores_outliers():
    x = torch.linspace(0, 1, 500)
    y = 3.0 * x + 0.5
    y[::50] += 10.0
    s, b = fit_scale_shift(x, y)
    assert s == pytest.approx(3.0, abs=1e-6) and b == pytest.approx(0.5, abs=1e-6)


def test_joint_normalisation_keeps_relative_order_across_views():
    pred = torch.stack([torch.linspace(0, 1, 64).view(8, 8), torch.linspace(0, 2, 64).view(8, 8)])
    d = normalise_jointly(pred, qs=(0.0, 100.0))
    assert float(d.min()) == 0.0 and float(d.max()) == 1.0
    assert torch.allclose(d[0] * 2, d[1])


def test_monocular_prediction_aligned_to_partial_renderer_depth(scene):
    """Per-view affine-ambiguous inverse depth becomes metric where the renderer gave depth for part of the view."""
    g = torch.Generator().manual_seed(0)
    inv_true = torch.where(scene.valid, 1.0 / scene.depth.clamp_min(1e-6), torch.zeros_like(scene.depth))
    scales = torch.rand(16, 1, 1, generator=g) * 3 + 0.5
    shifts = torch.rand(16, 1, 1, generator=g) - 0.5
    pred = scales * inv_true + shifts  # what a monocular estimator gives: right shape, unknown scale/shift per view
    left = torch.zeros_like(scene.valid)
    left[..., :48] = True
    partial = DepthMaps(depth=torch.where(left, scene.depth, torch.zeros_like(scene.depth)), valid=scene.valid & left)
    aligned, notes = align_monocular(pred, partial, mask=scene.valid)
    assert aligned.depth.shape == scene.depth.shape and len(notes) == 16
    right = scene.valid & ~left
    assert torch.equal(aligned.valid, scene.valid)
    assert torch.allclose(aligned.depth[right], scene.depth[right], rtol=1e-3)
    assert torch.equal(aligned.depth[partial.valid], scene.depth[partial.valid])  # renderer depth kept as is


def test_view_without_renderer_depth_uses_the_set_wide_fit(scene):
    inv_true = torch.where(scene.valid, 1.0 / scene.depth.clamp_min(1e-6), torch.zeros_like(scene.depth))
    pred = 2.0 * inv_true + 0.3  # one model, one (unknown) affine for all views
    partial = DepthMaps(depth=scene.depth.clone(), valid=scene.valid.clone())
    partial.depth[3] = 0
    partial.valid[3] = False
    aligned, notes = align_monocular(pred, partial, mask=scene.valid)
    assert "set-wide fit" in notes[3]
    assert torch.allclose(aligned.depth[3][scene.valid[3]], scene.depth[3][scene.valid[3]], rtol=1e-3)
    merged = merge_depth(partial, aligned, [3])
    assert torch.equal(merged.valid, scene.valid)


def test_monocular_without_any_renderer_depth_gives_a_consistent_hint(scene):
    inv_true = torch.where(scene.valid, 1.0 / scene.depth.clamp_min(1e-6), torch.zeros_like(scene.depth))
    pred = 5.0 * inv_true - 1.0
    aligned, notes = align_monocular(pred, None, mask=scene.valid)
    assert "no renderer depth" in notes[0]
    assert torch.equal(aligned.valid, scene.valid)
    hint = depth_hint(aligned)[..., 0]
    assert (hint[~scene.valid] == 0).all()
    z = scene.depth[scene.valid]
    v = hint[scene.valid][torch.argsort(z)]
    assert (v[1:] <= v[:-1] + 1e-6).all()
    assert max_grey_spread_at_equal_depth(scene, hint) <= 1 / 255

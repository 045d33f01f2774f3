"""ConfidenceBlend's pure parts: feathering, per-signal confidences, the weights and the blend itself."""
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from glimpse.blend import blend, confidence_blend, confidence_preview
from glimpse.cameras import make_cameras, unproject
from glimpse.confidence import (
    blend_weights, combine, confidence_signals, confidence_weights, depth_edges, edge_confidence, grazing_confidence,
    opacity_confidence, trusted, upsample_weight, view_cosine,
)
from glimpse.feather import box_sum, dilate, erode, feather, tent
from glimpse.types import DepthMaps

SIZE = 96
FOCAL = 100.0


def frontal_cameras(n: int, size: int = SIZE, focal: float = FOCAL):
    k = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    w2c = torch.cat([torch.eye(3, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)], 1)
    return make_cameras(k.expand(n, 3, 3).clone(), w2c.expand(n, 3, 4).clone(), (size, size))


def plane_depth(normal, distance: float, size: int = SIZE, focal: float = FOCAL) -> torch.Tensor:
    """z-depth [H,W] of the plane n . X = distance seen by the frontal camera."""
    cams = frontal_cameras(1, size, focal)
    r = unproject(torch.ones(1, size, size, dtype=torch.float64), cams.intrinsics)[0]
    n = torch.tensor(normal, dtype=torch.float64)
    return (distance / (r @ n)).float()


def step_scene(size: int = SIZE):
    """A frontal wall at z = 2 with a frontal box at z = 1.5 in the middle: one depth discontinuity, no grazing."""
    z = torch.full((1, size, size), 2.0)
    z[:, 32:64, 32:64] = 1.5
    return z


def test_feather_primitives_match_naive_morphology():
    torch.manual_seed(0)
    m = torch.rand(2, 37, 41) > 0.25
    for r in (1, 2, 3):
        padded = F.pad(m.float()[:, None], (r, r, r, r), mode="replicate")
        eroded = -F.max_pool2d(-padded, 2 * r + 1, 1)[:, 0] > 0.5
        dilated = F.max_pool2d(padded, 2 * r + 1, 1)[:, 0] > 0.5
        assert torch.equal(erode(m, r), eroded)
        assert torch.equal(dilate(m, r), dilated)
        naive = F.avg_pool2d(padded, 2 * r + 1, 1)[:, 0] * (2 * r + 1) ** 2
        assert torch.equal(box_sum(m.float(), r), naive.round())
    t = tent(m, 4)
    assert t.min() >= 0 and t.max() <= 1


def test_feather_is_exact_inside_and_outside_and_smooth_between():
    m = torch.zeros(1, 64, 64, dtype=torch.bool)
    m[:, 10:54, 10:54] = True
    for radius in (0, 1, 5, 6):
        f = feather(m, radius)
        assert (f[~m] == 0).all()  # never reaches outside the mask
        deep = erode(m, radius)
        assert (f[deep] == 1).all()  # exactly 1 farther than the radius
        assert ((f > 0) & (f < 1)).sum() == 0 if radius <= 1 else ((f > 0) & (f < 1)).any()
    row = feather(m, 6)[0, 32]
    assert (row[10:33].diff() >= 0).all()  # monotone ramp
    assert row.diff().abs().max() <= 0.35  # no hard seam


def test_opacity_confidence():
    a = torch.tensor([[[0.0, 0.4, 0.5, 0.75, 0.99, 1.0]]])
    c = opacity_confidence(a)
    assert c[0, 0, 0] == 0 and c[0, 0, 2] == 0 and c[0, 0, -1] == 1
    assert 0 < c[0, 0, 3] < c[0, 0, 4] < 1


def test_view_cosine_is_exact_on_planes():
    cams = frontal_cameras(1)
    for tilt in (0.0, 40.0, 75.0):
        t = math.radians(tilt)
        n = (math.sin(t), 0.2 * math.sin(t), math.cos(t))
        z = plane_depth(n, 2.0)[None]
        rays = unproject(torch.ones(1, SIZE, SIZE, dtype=torch.float64), cams.intrinsics)[0]
        truth = ((rays @ torch.tensor(n, dtype=torch.float64)).abs() / rays.norm(dim=-1)
                 / torch.tensor(n, dtype=torch.float64).norm()).float()
        seen = (z[0] > 0) & (z[0] < 20)  # where the plane is in front of the camera
        assert seen.sum() > SIZE * SIZE / 2
        assert torch.allclose(view_cosine(z, cams.intrinsics)[0][seen], truth[seen], atol=1e-4)


def test_grazing_confidence_lower_at_grazing_angles():
    cams = frontal_cameras(1)
    frontal = grazing_confidence(plane_depth((0, 0, 1), 2.0)[None], cams.intrinsics)
    steep = grazing_confidence(plane_depth((math.sin(math.radians(84)), 0, math.cos(math.radians(84))), 2.0)[None],
                               cams.intrinsics)
    centre = (slice(None), slice(40, 56), slice(40, 56))
    assert (frontal[centre] == 1).all()
    assert steep[0, 48, 48] < 0.01 and steep[centre].max() < 0.2
    assert (grazing_confidence(torch.zeros(1, 8, 8), cams.intrinsics) == 0).all()  # no surface, no trust


def test_depth_edges_and_edge_confidence():
    cams = frontal_cameras(1)
    z = step_scene()
    edges = depth_edges(z, cams.intrinsics)
    ring = torch.zeros_like(edges)
    ring[:, 31:65, 31:65] = True
    ring[:, 33:63, 33:63] = False  # the pixels on either side of the step ...
    for r in (31, 64):
        for c in (31, 64):
            ring[:, r, c] = False  # ... that touch it along a row or a column
    assert torch.equal(edges, ring)
    # a steep but continuous plane (75 deg, in front of a narrow camera everywhere) has no discontinuity
    tele = frontal_cameras(1, focal=400.0)
    tilted = plane_depth((math.sin(math.radians(75)), 0, math.cos(math.radians(75))), 2.0, focal=400.0)[None]
    assert (tilted > 0).all() and not depth_edges(tilted, tele.intrinsics).any()
    conf = edge_confidence(z, cams.intrinsics, radius=6)
    assert (conf[edges] == 0).all()
    assert conf[0, 48, 48] == 1 and conf[0, 10, 10] == 1  # interiors far from the step
    assert conf[0, 48, 66] < conf[0, 48, 70] < 1  # rises with the distance from the step
    holes = z.clone()
    holes[:, :, :20] = 0  # background: its border is a silhouette
    assert (edge_confidence(holes, cams.intrinsics, 6)[:, :, :21] == 0).all()  # up to the silhouette pixels


def test_confidence_lower_at_edges_and_grazing_than_on_a_frontal_interior():
    cams = frontal_cameras(2)
    z = torch.cat([step_scene(), plane_depth((math.sin(math.radians(80)), 0, math.cos(math.radians(80))), 2.0)[None]])
    alpha = torch.ones(2, SIZE, SIZE)
    weight, signals, size = confidence_weights(alpha, DepthMaps(depth=z, valid=z > 0), cams, feather_radius=4,
                                               edge_radius=4)
    assert size == (SIZE, SIZE)
    conf = combine(signals, {"opacity": 1, "edge": 1, "grazing": 1})
    interior, near_edge, grazing = conf[0, 48, 48], conf[0, 48, 65], conf[1, 48, 48]
    assert interior == 1 and weight[0, 48, 48] == 1
    assert near_edge < 0.6 and grazing < 0.6  # below the default threshold
    assert weight[0, 48, 64] == 0 and weight[1, 48, 48] == 0


def test_combine_weights():
    a = torch.full((1, 2, 2), 0.25)
    b = torch.ones(1, 2, 2)
    assert torch.allclose(combine({"a": a, "b": b}, {"a": 1, "b": 1}), torch.full((1, 2, 2), 0.5))
    assert torch.equal(combine({"a": a, "b": b}, {"a": 0, "b": 1}), b)  # weight 0 ignores a signal
    assert torch.equal(combine({"a": a, "b": b}, {}), b)  # no signal: trust everything
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        combine({"a": a}, {"a": -1})
    with pytest.raises(ValueError, match="unknown confidence signal 'c'"):
        combine({"a": a}, {"c": 1})


def test_trusted_matches_the_weighted_geometric_mean():
    torch.manual_seed(3)
    signals = {"opacity": torch.rand(2, 32, 32), "edge": torch.rand(2, 32, 32), "grazing": torch.rand(2, 32, 32)}
    for weights in ({"opacity": 1, "edge": 1, "grazing": 1}, {"opacity": 2, "edge": 0, "grazing": 1},
                    {"opacity": 0.5, "edge": 1.5, "grazing": 1}):
        mean = combine(signals, weights)
        fast = trusted(signals, weights, 0.6)
        assert (fast == (mean >= 0.6))[(mean - 0.6).abs() > 1e-5].all()


def test_blend_is_exact_at_zero_and_one():
    torch.manual_seed(1)
    original = torch.rand(3, 16, 16, 4)
    enhanced = torch.rand(3, 16, 16, 3)
    ones, zeros = torch.ones(3, 16, 16), torch.zeros(3, 16, 16)
    assert torch.equal(blend(original, enhanced, ones)[..., :3], enhanced)
    assert torch.equal(blend(original, enhanced, zeros), original)
    assert torch.equal(blend(original, enhanced, ones)[..., 3], original[..., 3])  # alpha is kept
    half = blend(original, enhanced, torch.full((3, 16, 16), 0.5))[..., :3]
    assert torch.allclose(half, (original[..., :3] + enhanced) / 2)


@pytest.mark.parametrize("work_size", [None, 48])
def test_confidence_blend_end_to_end(work_size):
    cams = frontal_cameras(1)
    z = step_scene()
    alpha = torch.zeros(1, SIZE, SIZE)
    alpha[:, 8:88, 8:88] = 1.0
    alpha[:, 8:88, 8:10] = 0.3  # soft edge
    torch.manual_seed(2)
    original, enhanced = torch.rand(1, SIZE, SIZE, 3), torch.rand(1, SIZE, SIZE, 3)
    out, weight, _ = confidence_blend(original, enhanced, alpha, DepthMaps(depth=z, valid=z > 0), cams,
                                      feather_radius=4, edge_radius=4, work_size=work_size)
    assert out.shape == original.shape and weight.shape == alpha.shape
    trusted, untrusted = weight == 1, weight == 0
    assert torch.equal(out[trusted], enhanced[trusted])
    assert torch.equal(out[untrusted], original[untrusted])
    assert torch.equal(out[alpha == 0], original[alpha == 0])  # background stays as it was
    assert (weight[alpha < 0.5] == 0).all()
    assert trusted[0, 20, 20] and trusted[0, 48, 48]  # frontal interiors
    assert untrusted[0, 48, 63] and untrusted[0, 48, 64]  # on the depth step
    ramp = weight[0, 48, 64:90]
    assert ((ramp > 0) & (ramp < 1)).any() and ramp.diff().abs().max() <= 0.5  # feathered, no hard seam
    preview = confidence_preview(original, weight, alpha)
    assert preview.shape == (1, SIZE, SIZE, 3) and torch.equal(preview[alpha == 0], original[alpha == 0])


def test_upsample_weight_snaps_and_respects_alpha():
    small = torch.zeros(1, 8, 8)
    small[:, 2:6, 2:6] = 1.0
    alpha = torch.ones(1, 32, 32)
    alpha[:, 12, 12] = 0
    w = upsample_weight(small, alpha)
    assert w[0, 16, 16] == 1 and w[0, 0, 0] == 0 and w[0, 12, 12] == 0
    assert ((w == 0) | (w == 1) | ((w > 1e-6) & (w < 1 - 1e-6))).all()


@pytest.mark.parametrize("small, big", [((16, 24), (32, 48)), ((16, 24), (32, 24)), ((512, 512), (1024, 1024)),
                                        ((16, 24), (64, 96)), ((16, 24), (48, 72)), ((16, 24), (24, 36)),
                                        ((16, 24), (16, 24)), ((16, 24), (32, 96))])
def test_upsample_weight_in_a_box_is_the_whole_maps_box(small, big):
    """Only the box is made (interpolating a crop of the source for power-of-two factors): the whole map's values up
    to the last bit, exact zeros where it has them, including boxes at the frame's edges."""
    from glimpse.confidence import nonzero_box

    g = torch.Generator().manual_seed(big[0])
    for trial in range(6):
        weight = torch.zeros(small)
        t, le = (int(torch.randint(0, n - 2, (1,), generator=g)) for n in small)
        rows, cols = slice(t, t + 1 + trial * 2), slice(le, le + 3 + trial * 3)
        weight[rows, cols] = torch.rand(small, generator=g)[rows, cols]
        weight[t, le] = 1.0 - 1e-7  # snapped to 1
        alpha = torch.rand(big, generator=g)
        box = nonzero_box(weight, big)
        whole = upsample_weight(weight, alpha)
        part = upsample_weight(weight, alpha, box=box)
        assert part.shape == whole[box].shape and torch.equal(part == 0, whole[box] == 0)
        assert torch.allclose(part, whole[box], rtol=0, atol=2.4e-7) and part.max() <= 1
        outside = torch.ones(big, dtype=torch.bool)
        outside[box] = False
        assert not whole[outside].any()  # the box holds every nonzero of the upsampled weight


@pytest.mark.parametrize("per_group", [1, 3, 16])
def test_confidence_weights_in_view_groups_equal_one_batch(monkeypatch, per_group):
    """Each view's weight and signals depend on that view alone: any grouping of the views gives one batch's values,
    though each group crops to its own views' box."""
    n = 5
    cams = frontal_cameras(n)
    z = step_scene().expand(n, SIZE, SIZE).clone()
    alpha = torch.zeros(n, SIZE, SIZE)
    for i in range(n):  # a different foreground box per view
        alpha[i, 4 + 6 * i:60 + 5 * i, 10 + 3 * i:90 - 2 * i] = 1.0
    z[alpha == 0] = 0.0
    depth = DepthMaps(depth=z, valid=z > 0)
    monkeypatch.setattr("glimpse.threads.VIEWS_PER_GROUP", n)
    weight, signals, size = confidence_weights(alpha, depth, cams, work_size=48)
    assert weight.any()
    monkeypatch.setattr("glimpse.threads.VIEWS_PER_GROUP", per_group)
    grouped, grouped_signals, grouped_size = confidence_weights(alpha, depth, cams, work_size=48)
    assert grouped_size == size and torch.equal(grouped, weight)
    assert all(torch.equal(grouped_signals[k], signals[k]) for k in signals)


def test_bad_inputs():
    cams = frontal_cameras(2)
    z = torch.full((2, SIZE, SIZE), 2.0)
    depth = DepthMaps(depth=z, valid=z > 0)
    with pytest.raises(ValueError, match="threshold must be in"):
        blend_weights(torch.ones(1, 4, 4), torch.ones(1, 4, 4), threshold=1.5)
    with pytest.raises(ValueError, match="3 views but 2 depth maps and 2 cameras"):
        confidence_signals(torch.ones(3, SIZE, SIZE), depth, cams)
    with pytest.raises(ValueError, match="enhanced views are 32x32 but the originals are 96x96"):
        confidence_blend(torch.rand(2, SIZE, SIZE, 3), torch.rand(2, 32, 32, 3), torch.ones(2, SIZE, SIZE), depth, cams)
    with pytest.raises(ValueError, match="mask is"):
        confidence_blend(torch.rand(2, SIZE, SIZE, 3), torch.rand(2, SIZE, SIZE, 3), torch.ones(2, 32, 32), depth, cams)


@pytest.mark.parametrize("shape,size", [((3, 64, 48), (32, 24)), ((2, 60, 90), (20, 30)), ((2, 50, 70), (32, 24)),
                                        ((1, 8, 8), (8, 8))])
def test_min_pool_is_the_minimum_of_each_cell(shape, size):
    from glimpse.confidence import min_pool

    x = torch.rand(shape)
    expected = -F.adaptive_max_pool2d(-x[:, None], size)[:, 0]
    out = min_pool(x, size)
    assert out.shape == (shape[0], *size) and out.is_contiguous() and torch.equal(out, expected)


@pytest.mark.parametrize("n, size", [(1024, 512), (704, 512), (256, 512), (96, 96), (100, 33), (7, 3), (512, 1)])
def test_depth_at_size_samples_as_nearest_exact_interpolation(n, size):
    """depth_at_size gathers the pixels F.interpolate(mode="nearest-exact") would pick (strided or indexed)."""
    from glimpse.confidence import depth_at_size

    z = torch.rand(2, n, n + 3, generator=torch.Generator().manual_seed(n)) + 0.5
    z[:, ::5] = 0.0
    depth = DepthMaps(depth=z, valid=z > 0)
    cams = frontal_cameras(2, n)
    d, _ = depth_at_size(depth, replace(cams, image_size=(n, n + 3)), (size, size + 1))
    expected = F.interpolate(z[:, None], size=(size, size + 1), mode="nearest-exact")[:, 0]
    assert torch.equal(d.depth, expected) and torch.equal(d.valid, expected > 0)

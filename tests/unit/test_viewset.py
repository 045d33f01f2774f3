"""View sets on disk: discovery, validation messages, formats, loading at a working resolution, fingerprints.

Bad-input tests work on tmp_path copies of the fox sample set, samples/fox (never on the set itself).
"""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.cameras import orbit_cameras, pixel_centres, project
from glimpse.depth import depth_hint
from glimpse.scan import fingerprint, scan_view_set
from glimpse.views import chunks
from glimpse.viewset import composite, load_view_set, parse_colour, views_without_depth, working_size

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "fox"  # 16 views at 256 px, depth, cameras, a README


def copy_sample(dst: Path) -> Path:
    """A writable copy of the 256 sample set (top-level files only)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in SAMPLE.iterdir():
        if f.is_file() and f.suffix != ".md":
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.fixture
def sample(tmp_path) -> Path:
    return copy_sample(tmp_path / "set")


def snapshot(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def render_spheres(cams, spheres=(((0.3, 0.1, 0.0), 0.3), ((-0.35, -0.2, 0.1), 0.15))) -> torch.Tensor:
    """Camera z [N,H,W] of the nearest sphere per pixel centre (0 = background), ray-cast at ``cams``."""
    h, w = cams.image_size
    uv = pixel_centres(h, w, torch.float64)
    k = cams.intrinsics
    x = (uv[..., 0] - k[:, 0, 2, None, None]) / k[:, 0, 0, None, None]
    y = (uv[..., 1] - k[:, 1, 2, None, None]) / k[:, 1, 1, None, None]
    d = torch.einsum("nij,nhwj->nhwi", cams.camera_to_world[:, :3, :3], torch.stack([x, y, torch.ones_like(x)], -1))
    o = cams.camera_to_world[:, None, None, :3, 3]
    best = torch.full(d.shape[:-1], float("inf"), dtype=torch.float64)
    for centre, radius in spheres:
        oc = o - torch.tensor(centre, dtype=torch.float64)
        a, b, c = (d * d).sum(-1), 2 * (oc * d).sum(-1), (oc * oc).sum(-1) - radius**2
        disc = b * b - 4 * a * c
        t = (-b - disc.clamp_min(0).sqrt()) / (2 * a)
        best = torch.where((disc > 0) & (t > 0) & (t < best), t, best)
    return torch.where(torch.isfinite(best), best, torch.zeros_like(best))


def write_synthetic_set(folder: Path, n: int = 4, size=(96, 160), depth_ext: str = ".npy") -> torch.Tensor:
    """Ray-cast spheres at ``n`` orbit cameras into a view-set folder; returns the depth written."""
    folder.mkdir(parents=True, exist_ok=True)
    cams = orbit_cameras(n, size)
    z = render_spheres(cams).float()
    views = [{"index": i, "K": cams.intrinsics[i].tolist(), "world_to_camera": cams.world_to_camera[i].tolist(),
              "image_size": list(size)} for i in range(n)]
    (folder / "cameras.json").write_text(json.dumps({"views": views}))
    for i in range(n):
        a = (z[i] > 0).numpy().astype(np.uint8) * 255
        rgb = np.clip(z[i].numpy()[..., None] * np.array([100, 60, 30]), 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(folder / f"view_{i:02d}.png")
        if depth_ext == ".npy":
            np.save(folder / f"view_{i:02d}_depth.npy", z[i].numpy())
    return z


# --------------------------------------------------------------------------------------------------- happy paths

def test_sample_set_loads_with_alpha_depth_and_scaled_cameras(sample):
    before = snapshot(sample)
    vs = load_view_set(sample, resolution=128, background="#808080")
    assert vs.images.shape == (16, 128, 128, 3) and vs.images.dtype == torch.float32
    assert vs.alpha.shape == (16, 128, 128) and vs.depth.depth.shape == (16, 128, 128)
    assert 0 <= float(vs.images.min()) and float(vs.images.max()) <= 1
    assert vs.cameras.image_size == (128, 128) and len(vs.cameras) == 16
    assert vs.cameras.intrinsics[0, 0, 0] == pytest.approx(140.0) and vs.cameras.intrinsics[0, 0, 2] == 64.0
    assert vs.depth.valid.equal(vs.depth.depth > 0) and views_without_depth(vs.depth) == []
    assert vs.depth.near is not None and 1.0 < vs.depth.near < vs.depth.far < 2.0
    background = vs.alpha == 0
    assert torch.allclose(vs.images[background], torch.full((3,), 128 / 255))  # composited, never black
    assert snapshot(sample) == before  # nothing written into the set


def test_native_resolution_keeps_pixels_and_alpha(sample):
    vs = load_view_set(sample, resolution=0, background=(1.0, 1.0, 1.0))
    rgba = np.asarray(Image.open(sample / "view_03.png")).astype(np.float32) / 255
    assert torch.allclose(vs.alpha[3], torch.from_numpy(rgba[..., 3]))
    expect = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
    assert torch.allclose(vs.images[3], torch.from_numpy(expect), atol=1e-6)
    depth = np.load(sample / "view_03_depth.npz")["depth"]
    assert torch.equal(vs.depth.depth[3], torch.from_numpy(depth))


def test_a_selection_of_views_keeps_the_whole_sets_depth_range_and_indices(sample):
    full = load_view_set(sample, resolution=64)
    part = load_view_set(sample, resolution=64, views="4-7,12")
    assert part.images.shape == (5, 64, 64, 3) and part.depth.depth.shape == (5, 64, 64)
    assert part.cameras.view_index.tolist() == [4, 5, 6, 7, 12]
    keep = [4, 5, 6, 7, 12]
    assert torch.equal(part.images, full.images[keep]) and torch.equal(part.alpha, full.alpha[keep])
    assert torch.equal(part.depth.depth, full.depth.depth[keep])
    assert torch.equal(part.cameras.intrinsics, full.cameras.intrinsics[keep])
    assert torch.equal(part.cameras.world_to_camera, full.cameras.world_to_camera[keep])
    assert (part.depth.near, part.depth.far) == (full.depth.near, full.depth.far)
    assert torch.equal(depth_hint(part.depth), depth_hint(full.depth)[keep])  # one grey per depth across chunks
    assert [r.index for r in part.depth_reports] == keep
    assert load_view_set(sample, resolution=64, views=[12, 4]).cameras.view_index.tolist() == [4, 12]
    with pytest.raises(ValueError, match=r"views: view selection '9-20' is outside 0-15 \(the set has 16 views\)"):
        load_view_set(sample, resolution=64, views="0-3,9-20")
    with pytest.raises(ValueError, match="bad view selection 'x'"):
        load_view_set(sample, resolution=64, views="x")


def test_chunks():
    assert chunks(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert chunks(3, 0) == [slice(0, 3)]


def test_letterboxed_set_projects_3d_points_to_the_right_pixels(tmp_path):
    """A 160x96 set loaded at 128: content 128x77 centred on a 128x128 canvas; its cameras see what was loaded."""
    write_synthetic_set(tmp_path / "s", n=4, size=(96, 160))
    vs = load_view_set(tmp_path / "s", resolution=128, background="#ff0000")
    assert vs.images.shape == (4, 128, 128, 3) and vs.content == (25, 0, 77, 128)
    # padding: background colour, alpha 0, depth invalid
    assert torch.equal(vs.images[:, :25], torch.tensor([1.0, 0.0, 0.0]).expand(4, 25, 128, 3))
    assert (vs.alpha[:, :25] == 0).all() and (vs.alpha[:, 102:] == 0).all()
    assert not vs.depth.valid[:, :25].any() and not vs.depth.valid[:, 102:].any()
    # the same scene ray-cast directly with the adjusted cameras matches the resized, padded depth
    direct = render_spheres(vs.cameras).float()
    both = (direct > 0) & vs.depth.valid
    agree = ((direct > 0) == vs.depth.valid).float().mean()
    assert agree > 0.99
    assert (direct[both] - vs.depth.depth[both]).abs().median() < 2e-3
    # sphere centres project to the centre of their silhouette in the loaded masks
    centre = torch.tensor([[0.3, 0.1, 0.0]], dtype=torch.float64)
    px, _ = project(centre, vs.cameras.intrinsics, vs.cameras.world_to_camera)
    for i in range(4):
        near_centre = vs.depth.depth[i, int(px[i, 0, 1]), int(px[i, 0, 0])]
        assert near_centre > 0  # the big sphere covers its projected centre in every view


@pytest.mark.parametrize("resolution", [0, 64, 256])
def test_loads_under_inference_mode_as_comfyui_runs_nodes(tmp_path, resolution):
    write_synthetic_set(tmp_path / "s", n=3, size=(96, 160))
    with torch.inference_mode():
        vs = load_view_set(tmp_path / "s", resolution=resolution)
        hint = depth_hint(vs.depth)
    assert vs.images.is_inference() and hint.shape[0] == 3 and bool(vs.depth.valid.any())


def test_native_size_not_a_multiple_of_64_is_padded_without_resampling(tmp_path):
    z = write_synthetic_set(tmp_path / "s", n=2, size=(96, 160))
    vs = load_view_set(tmp_path / "s", resolution=0, background=(0.2, 0.4, 0.6))
    assert vs.images.shape == (2, 128, 192, 3) and vs.content == (16, 16, 96, 160)
    rgba = np.asarray(Image.open(tmp_path / "s" / "view_01.png")).astype(np.float32) / 255
    expect = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:]) * np.array([0.2, 0.4, 0.6], np.float32)
    assert torch.allclose(vs.images[1, 16:112, 16:176], torch.from_numpy(expect), atol=1e-6)
    assert torch.allclose(vs.images[1, :16], torch.tensor([0.2, 0.4, 0.6]).expand(16, 192, 3))
    assert torch.equal(vs.depth.depth[1, 16:112, 16:176], z[1]) and not vs.depth.valid[:, :16].any()
    assert vs.cameras.intrinsics[1, 0, 2] == pytest.approx(80 + 16) and vs.cameras.image_size == (128, 192)


def test_depth_formats_exr_png16_npz(tmp_path):
    import OpenEXR

    folder = tmp_path / "s"
    z = write_synthetic_set(folder, n=4, size=(64, 64), depth_ext="none")
    np.savez_compressed(folder / "view_00_depth.npz", depth=z[0].numpy())
    OpenEXR.File({"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage},
                 {"Z": z[1].numpy()}).write(str(folder / "view_01_depth.exr"))
    Image.fromarray((z[2].numpy() / 1e-4).round().astype(np.uint16)).save(folder / "view_02_depth.png")
    with pytest.raises(ValueError, match=r"view_02 depth: .*16-bit PNG, which needs a stated scale"):
        scan_view_set(folder)
    vs = load_view_set(folder, resolution=0, depth_png_scale=1e-4)
    assert torch.equal(vs.depth.depth[0], z[0]) and torch.equal(vs.depth.depth[1], z[1])
    assert torch.allclose(vs.depth.depth[2], z[2], atol=1e-4)
    assert views_without_depth(vs.depth) == [3]  # view 3 has no depth file
    # the scale may also be stated in cameras.json
    data = json.loads((folder / "cameras.json").read_text())
    data["depth_png_scale"] = 1e-4
    (folder / "cameras.json").write_text(json.dumps(data))
    assert torch.allclose(load_view_set(folder, 0).depth.depth[2], z[2], atol=1e-4)


def test_rgb_views_take_alpha_from_their_mask_file(tmp_path):
    folder = tmp_path / "s"
    z = write_synthetic_set(folder, n=2, size=(64, 64))
    for i in range(2):
        rgba = Image.open(folder / f"view_{i:02d}.png")
        rgba.convert("RGB").save(folder / f"view_{i:02d}.png")
        rgba.getchannel("A").save(folder / f"view_{i:02d}_mask.png")
    vs = load_view_set(folder, 0)
    assert torch.equal(vs.alpha > 0.5, z > 0)


def test_strip_is_split_into_views_with_syncdreamer_cameras(tmp_path):
    tiles = [np.full((32, 32, 4), i * 10, np.uint8) for i in range(16)]
    strip = tmp_path / "strip.png"
    Image.fromarray(np.concatenate(tiles, axis=1)).save(strip)
    spec = scan_view_set(strip)
    assert spec.kind == "strip" and len(spec) == 16
    vs = load_view_set(spec, resolution=64, background=(0, 0, 0))
    assert vs.images.shape == (16, 64, 64, 3)
    assert vs.cameras.intrinsics[0, 0, 0] == pytest.approx(70.0) and vs.cameras.azimuth_deg[4] == 90.0
    assert views_without_depth(vs.depth) == list(range(16))
    assert vs.alpha[5].mean() == pytest.approx(50 / 255, abs=1e-3)
    with pytest.raises(ValueError, match="does not split into 5 equal views"):
        scan_view_set(strip, strip_views=5)


# ------------------------------------------------------------------------------------------------- bad input

def test_path_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_view_set(tmp_path / "nope")


def test_missing_cameras_json(sample):
    (sample / "cameras.json").unlink()
    with pytest.raises(FileNotFoundError, match="cameras.json is missing"):
        scan_view_set(sample)


def test_view_and_camera_counts_differ(sample):
    for f in sample.glob("view_15*"):
        f.unlink()
    with pytest.raises(ValueError, match=r"cameras.json: has 16 cameras but .* has 15 views"):
        scan_view_set(sample)


def test_view_indices_with_a_gap(sample):
    (sample / "view_04.png").unlink()
    with pytest.raises(ValueError, match=r"gap: view_04.png missing"):
        scan_view_set(sample)


def test_depth_size_differs_from_its_image(sample):
    (sample / "view_07_depth.npz").unlink()
    np.save(sample / "view_07_depth.npy", np.ones((128, 128), np.float32))
    with pytest.raises(ValueError, match=r"view_07 depth is 128x128 but its image is 256x256"):
        scan_view_set(sample)


def test_truncated_png(sample):
    data = (sample / "view_05.png").read_bytes()
    (sample / "view_05.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"view_05 image: .*view_05.png .*truncated"):
        scan_view_set(sample)


def test_two_depth_files_for_one_view(sample):
    np.save(sample / "view_02_depth.npy", np.ones((256, 256), np.float32))
    with pytest.raises(ValueError, match=r"view_02 depth: several files"):
        scan_view_set(sample)


def test_eight_bit_png_depth_is_refused(sample):
    (sample / "view_06_depth.npz").unlink()
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(sample / "view_06_depth.png")
    with pytest.raises(ValueError, match=r"view_06 depth: .* L PNG; depth PNGs must be 16-bit"):
        scan_view_set(sample, depth_png_scale=0.001)


def test_nan_negative_and_empty_depth_are_masked_counted_and_reported(sample, caplog):
    d = np.load(sample / "view_01_depth.npz")["depth"]
    bad = d.copy()
    bad[0, :10] = np.nan
    bad[1, :4] = -1.0
    bad[2, :3] = np.inf
    np.savez_compressed(sample / "view_01_depth.npz", depth=bad)
    np.savez_compressed(sample / "view_09_depth.npz", depth=np.zeros_like(d))
    with caplog.at_level(logging.WARNING):
        vs = load_view_set(sample, resolution=0)
    r1, r9 = vs.depth_reports[1], vs.depth_reports[9]
    assert (r1.non_finite, r1.negative, r1.valid) == (13, 4, int((d > 0).sum()) - int((d[1, :4] > 0).sum()))
    assert not vs.depth.valid[1, 0, :10].any() and not vs.depth.valid[1, 1, :4].any()
    assert torch.isfinite(vs.depth.depth).all() and (vs.depth.depth >= 0).all()
    assert r9.valid == 0 and views_without_depth(vs.depth) == [9]
    assert "view_01 depth (view_01_depth.npz): 13 NaN/inf and 4 negative" in caplog.text
    assert "view_09 depth (view_09_depth.npz) has no valid pixel" in caplog.text
    hint = depth_hint(vs.depth)
    assert (hint[9] == 0).all() and torch.isfinite(hint).all()


def test_every_bad_input_is_caught_before_any_pixel_is_decoded(sample, monkeypatch):
    """Validation reads headers only: a size mismatch in the LAST view fails before any depth array is loaded."""
    import glimpse.viewset as vsmod

    np.save(sample / "view_15_depth.npy", np.ones((64, 64), np.float32))
    (sample / "view_15_depth.npz").unlink()
    calls = []
    monkeypatch.setattr(vsmod, "read_depth", lambda *a: calls.append(a))
    with pytest.raises(ValueError, match="view_15 depth is 64x64"):
        load_view_set(sample)
    assert calls == []


# --------------------------------------------------------------------------------------- fingerprint and helpers

def test_fingerprint_changes_when_any_file_of_the_set_changes(sample):
    f0 = fingerprint(sample)
    assert fingerprint(sample) == f0 and fingerprint(sample, hash_contents=True) != f0
    st = (sample / "view_12_mask.png").stat()
    os.utime(sample / "view_12_mask.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    f1 = fingerprint(sample)
    assert f1 != f0
    cams = sample / "cameras.json"
    h1 = fingerprint(sample, hash_contents=True)
    st = cams.stat()
    cams.write_text(cams.read_text().replace("280.0", "281.0", 1))
    os.utime(cams, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(sample, hash_contents=True) != h1  # content hashing sees edits that keep the stamp
    (sample / "notes.txt").write_text("not part of the set")
    assert fingerprint(sample) == fingerprint(sample)


@pytest.mark.parametrize("size, res, expect", [
    ((256, 256), 1024, ((1024, 1024), (1024, 1024), (0, 0))),
    ((96, 160), 128, ((77, 128), (128, 128), (25, 0))),
    ((600, 400), 1000, ((1024, 683), (1024, 704), (0, 10))),
    ((100, 70), 0, ((100, 70), (128, 128), (14, 29))),
])
def test_working_size(size, res, expect):
    assert working_size(size, res) == expect


def test_parse_colour():
    assert parse_colour("#ff8000") == pytest.approx((1.0, 128 / 255, 0.0))
    assert parse_colour("#fff") == (1.0, 1.0, 1.0)
    assert parse_colour("0.5, 0.25, 1") == (0.5, 0.25, 1.0)
    assert parse_colour("255,0,128") == pytest.approx((1.0, 0.0, 128 / 255))
    assert parse_colour(0.5) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="background colour"):
        parse_colour("purple-ish")


@pytest.mark.parametrize("box", [(0, 0, 0, 0), (3, 90, 5, 70), (0, 100, 0, 77), (40, 41, 76, 77)])
@pytest.mark.parametrize("bg", [(0.0, 0.0, 0.0), (0.2, 0.4, 0.6), (1.0, 1.0, 1.0)])
def test_composite_is_the_straight_alpha_formula_bit_for_bit(box, bg):
    """Compositing only alpha's box, in bands of rows, gives the full-frame formula's values exactly."""
    rng = np.random.default_rng(sum(box))
    u8 = rng.integers(0, 256, (100, 77, 4), dtype=np.uint8)
    t, b, le, r = box
    keep = np.zeros((100, 77), bool)
    keep[t:b, le:r] = True
    u8[..., 3] *= keep
    bg_np = np.array(bg, np.float32)
    a = u8[..., 3:4].astype(np.float32) * np.float32(1 / 255)
    expected = (u8[..., :3].astype(np.float32) * np.float32(1 / 255) - bg_np) * a + bg_np
    rgb, alpha = np.full((100, 77, 3), np.nan, np.float32), np.full((100, 77), np.nan, np.float32)
    composite(u8, bg_np, rgb, alpha)
    assert np.array_equal(rgb.view(np.uint32), expected.view(np.uint32))
    assert np.array_equal(alpha, a[..., 0])

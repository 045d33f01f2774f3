"""Cameras: the cameras.json schema, SyncDreamer's orbit, intrinsics under resize/pad, (un)projection round trips."""
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from glimpse.cameras import (
    camera_to_world,
    cat_cameras,
    depth_to_world,
    letterbox_cameras,
    load_cameras,
    orbit_cameras,
    parse_cameras,
    pixel_centres,
    project,
    scale_intrinsics,
    select_cameras,
    unproject,
    world_to_camera,
)
from glimpse.types import Cameras

# The fox sample set: 16 views at 256 px taken by SyncDreamer's cameras, which its cameras.json states.
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "fox"
CAMERAS_JSON = SAMPLE / "cameras.json"


def test_syncdreamer_file_parses_with_its_stated_angles_and_verification_points():
    cams = load_cameras(CAMERAS_JSON)
    assert len(cams) == 16 and cams.image_size == (256, 256)
    assert torch.allclose(cams.azimuth_deg, torch.arange(16, dtype=torch.float64) * 22.5, atol=1e-6)
    assert torch.allclose(cams.elevation_deg, torch.full((16,), 30.0, dtype=torch.float64), atol=1e-5)
    assert torch.equal(cams.view_index, torch.arange(16))
    data = json.loads(CAMERAS_JSON.read_text())
    pts = torch.tensor([[0, 0, 0], [0, 0, 0.5], [0, 0.5, 0]], dtype=torch.float64)
    px, z = project(pts, cams.intrinsics, cams.world_to_camera)
    assert px.shape == (16, 3, 2) and z.shape == (16, 3) and (z > 0).all()
    for v in data["verification"]:
        i = v["view"]
        assert px[i, 0].tolist() == pytest.approx(v["origin_px"], abs=2e-3)
        assert px[i, 1].tolist() == pytest.approx(v["up_point_0_0_0p5_px"], abs=2e-3)
        assert px[i, 2].tolist() == pytest.approx(v["y_point_0_0p5_0_px"], abs=2e-3)
    # camera_to_world in the file is the inverse we compute
    c2w = torch.tensor([v["camera_to_world"] for v in data["views"]], dtype=torch.float64)
    assert torch.allclose(cams.camera_to_world, c2w, atol=1e-6)


def test_orbit_cameras_reproduce_syncdreamer_16():
    ref = load_cameras(CAMERAS_JSON)
    cams = orbit_cameras(16)
    assert torch.allclose(cams.intrinsics, ref.intrinsics)
    assert torch.allclose(cams.world_to_camera, ref.world_to_camera, atol=1e-6)
    assert torch.allclose(cams.azimuth_deg, ref.azimuth_deg, atol=1e-6)


def test_angles_computed_from_poses_when_the_file_has_none():
    cams = orbit_cameras(8, elevation_deg=20.0, azimuth0_deg=10.0)
    views = [{"index": i, "K": cams.intrinsics[i].tolist(), "world_to_camera": cams.world_to_camera[i].tolist()}
             for i in range(8)]
    parsed = parse_cameras({"image_size": [256, 256], "views": views[::-1]})  # order by index, not position
    assert torch.allclose(parsed.azimuth_deg, 10.0 + 45.0 * torch.arange(8, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(parsed.elevation_deg, torch.full((8,), 20.0, dtype=torch.float64), atol=1e-9)
    # camera_to_world alone works too
    views_c2w = [{"K": cams.intrinsics[i].tolist(), "camera_to_world": cams.camera_to_world[i].tolist(),
                  "image_size": [256, 256]} for i in range(8)]
    assert torch.allclose(parse_cameras({"views": views_c2w}).world_to_camera, cams.world_to_camera, atol=1e-9)


def test_views_given_at_another_size_are_rescaled_to_the_first():
    cams = orbit_cameras(2)
    views = [{"K": scale_intrinsics(cams.intrinsics[i], (256, 256), (512 * (i + 1), 512 * (i + 1))).tolist(),
              "world_to_camera": cams.world_to_camera[i].tolist(), "image_size": [512 * (i + 1)] * 2}
             for i in range(2)]
    parsed = parse_cameras({"views": views})
    assert parsed.image_size == (512, 512)
    assert torch.allclose(parsed.intrinsics[1], parsed.intrinsics[0])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["views"].pop(3), "indices must run 0..14"),
    (lambda d: d["views"][2].pop("K"), "view 02 has no 'K'"),
    (lambda d: d["views"][5].update(world_to_camera=[[1, 0, 0, 0], [0, 1, 0, 0]]), "view 05: world_to_camera"),
    (lambda d: d["views"][1].update(world_to_camera=[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]),
     "not a proper rotation"),
    (lambda d: d["views"][4].pop("image_size"), "view 04 has no 'image_size'"),
    (lambda d: d.update(views=[]), "non-empty 'views'"),
])
def test_malformed_camera_files_name_the_view(tmp_path, mutate, message):
    cams = orbit_cameras(16)
    data = {"views": [{"index": i, "K": cams.intrinsics[i].tolist(),
                       "world_to_camera": cams.world_to_camera[i].tolist(),
                       "image_size": [256, 256]} for i in range(16)]}
    mutate(data)
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as e:
        load_cameras(path)
    assert str(path) in str(e.value)


def test_missing_or_broken_camera_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_cameras(tmp_path / "cameras.json")
    (tmp_path / "cameras.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON"):
        load_cameras(tmp_path / "cameras.json")


def test_pixel_centres_are_at_half_integers():
    uv = pixel_centres(2, 3)
    assert uv.shape == (2, 3, 2)
    assert uv[0, 0].tolist() == [0.5, 0.5] and uv[1, 2].tolist() == [2.5, 1.5]


def test_unproject_then_project_returns_each_pixel_centre():
    cams = orbit_cameras(4, (48, 64))
    depth = torch.rand(4, 48, 64, dtype=torch.float64) + 1.0
    world = depth_to_world(depth, cams)
    assert world.shape == (4, 48, 64, 3)
    px, z = project(world, cams.intrinsics, cams.world_to_camera)
    assert torch.allclose(z, depth, atol=1e-9)
    assert torch.allclose(px, pixel_centres(48, 64, torch.float64).expand(4, -1, -1, -1), atol=1e-9)
    # the explicit steps agree with the helper
    cam_pts = unproject(depth, cams.intrinsics)
    assert torch.allclose(camera_to_world(cam_pts, cams.camera_to_world), world)
    assert torch.allclose(world_to_camera(world, cams.world_to_camera), cam_pts, atol=1e-9)


def test_shared_points_project_into_every_camera():
    cams = orbit_cameras(16)
    pts = torch.zeros(5, 3)
    px, z = project(pts, cams.intrinsics, cams.world_to_camera)
    assert px.shape == (16, 5, 2) and px.dtype == torch.float32
    assert torch.allclose(px, torch.full_like(px, 128.0), atol=1e-4)
    assert torch.allclose(z, torch.full_like(z, 1.5), atol=1e-5)


def test_sample_depth_is_consistent_across_views_with_these_conventions():
    """Unproject view i's renderer depth and reproject it into view i+1: where visible, it hits view i+1's depth."""
    cams = load_cameras(SAMPLE / "cameras.json")
    depth = torch.from_numpy(np.stack([np.load(SAMPLE / f"view_{i:02d}_depth.npz")["depth"] for i in range(16)]))
    world = depth_to_world(depth.double(), cams)
    for i in (0, 5, 11):
        j = (i + 1) % 16
        pts = world[i][depth[i] > 0]
        px, z = project(pts, cams.intrinsics[j:j + 1], cams.world_to_camera[j:j + 1])
        col, row = px[0, :, 0].floor().long(), px[0, :, 1].floor().long()
        inside = (col >= 0) & (col < 256) & (row >= 0) & (row < 256)
        seen = depth[j][row[inside], col[inside]].double()
        visible = (seen > 0) & ((seen - z[0][inside]).abs() < 0.02)
        assert visible.float().mean() > 0.6  # most of the surface seen by view i is also seen by its neighbour
        err = (seen[visible] - z[0][inside][visible]).abs().median()
        assert err < 2e-3


def test_select_cameras_keeps_original_indices():
    cams = orbit_cameras(16)
    sub = select_cameras(cams, [3, 9])
    assert len(sub) == 2 and sub.view_index.tolist() == [3, 9]
    assert torch.equal(sub.world_to_camera, cams.world_to_camera[[3, 9]])
    assert select_cameras(sub, [1]).view_index.tolist() == [9]  # a selection of a selection keeps set indices


@dataclass(frozen=True)
class TaggedCameras(Cameras):
    """Cameras with one more per-view field and one more set-wide field, as later fields of Cameras will be."""

    neighbours: torch.Tensor | None = None  # int64 [N,2]
    set_name: str | None = None


def tagged(n: int = 16) -> TaggedCameras:
    cams = orbit_cameras(n)
    rows = torch.stack([(torch.arange(n) + 1) % n, (torch.arange(n) - 1) % n], -1)
    return TaggedCameras(**{k: getattr(cams, k) for k in Cameras.__dataclass_fields__}, neighbours=rows,
                         set_name="fox")


def test_select_and_join_carry_every_field():
    cams = tagged()
    sub = select_cameras(cams, [3, 9])
    assert isinstance(sub, TaggedCameras) and sub.set_name == "fox"
    assert sub.neighbours.tolist() == [[4, 2], [10, 8]]
    chunks = [select_cameras(cams, list(range(s, min(s + 5, 16)))) for s in range(0, 16, 5)]
    joined = cat_cameras(chunks)
    assert isinstance(joined, TaggedCameras) and joined.set_name == "fox" and joined.image_size == cams.image_size
    for name in ("intrinsics", "world_to_camera", "camera_to_world", "azimuth_deg", "elevation_deg", "view_index",
                 "neighbours"):
        assert torch.equal(getattr(joined, name), getattr(cams, name)), name
    shuffled = cat_cameras([chunks[2], chunks[0]])
    assert shuffled.view_index.tolist() == [10, 11, 12, 13, 14, 0, 1, 2, 3, 4]  # chunk order, set indices


def test_join_drops_a_per_view_field_some_chunk_lacks_and_refuses_two_sets():
    a, b = select_cameras(tagged(), [0, 1]), select_cameras(tagged(), [2])
    assert cat_cameras([a, replace(b, neighbours=None)]).neighbours is None
    assert cat_cameras([a, b]).neighbours.shape == (3, 2)
    with pytest.raises(ValueError, match="set_name is 'fox' in one and 'owl' in another"):
        cat_cameras([a, replace(b, set_name="owl")])
    with pytest.raises(ValueError, match=r"image_size is \(256, 256\) in one and \(128, 128\)"):
        cat_cameras([a, replace(b, image_size=(128, 128))])
    with pytest.raises(ValueError, match="no camera chunks"):
        cat_cameras([])


def test_letterbox_intrinsics_map_projections_exactly():
    cams = orbit_cameras(16, (96, 160))
    pts = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [-0.3, 0.25, -0.1]], dtype=torch.float64)
    px, _ = project(pts, cams.intrinsics, cams.world_to_camera)
    lb = letterbox_cameras(cams, resized=(77, 128), offset=(25, 0), canvas=(128, 128))
    assert lb.image_size == (128, 128)
    px2, _ = project(pts, lb.intrinsics, lb.world_to_camera)
    expect = torch.stack([px[..., 0] * 128 / 160, px[..., 1] * 77 / 96 + 25], -1)
    assert torch.allclose(px2, expect, atol=1e-9)

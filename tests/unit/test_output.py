"""Result writing: atomic files, safe subfolders, no silent overwrite, full disks and unwritable folders."""
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse.cameras import orbit_cameras, parse_cameras
from glimpse.files import atomic_write_bytes, sha256_file
from glimpse.output import cameras_to_json, claim_folder, resolve_subfolder, save_view_set, workflow_facts


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def tiny_fs():
    """A real 64 KiB filesystem (tmpfs) to fill up; needs root and mount permission."""
    mnt = Path(f"/tmp/glimpse-tiny-{uuid.uuid4().hex[:8]}")
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)
    mnt.rmdir()


def test_subfolder_names_stay_inside_the_output_folder(tmp_path):
    assert resolve_subfolder(tmp_path, "") == tmp_path.resolve()
    assert resolve_subfolder(tmp_path, "glimpse/run1") == (tmp_path / "glimpse" / "run1").resolve()
    for bad, why in (("../x", "'..'"), ("a/../../x", "'..'"), ("/etc", "absolute"), ("C:\\x", "absolute"),
                     ("\\\\server\\share", "absolute"), ("..", "'..'")):
        with pytest.raises(ValueError, match=why):
            resolve_subfolder(tmp_path, bad)
    (tmp_path / "escape").symlink_to("/tmp")
    with pytest.raises(ValueError, match="outside the output folder"):
        resolve_subfolder(tmp_path, "escape/x")


def test_atomic_write_replaces_whole_files(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two" and leftovers(tmp_path) == []


def test_full_disk_gives_a_clear_error_and_no_partial_file(tiny_fs):
    atomic_write_bytes(tiny_fs / "small.bin", b"x" * 1000)
    with pytest.raises(OSError, match=r"cannot write .*big\.bin: No space left on device"):
        atomic_write_bytes(tiny_fs / "big.bin", os.urandom(200_000))
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["small.bin"]  # no big.bin, no temporary file


def test_file_size_limit_gives_a_clear_error_and_no_partial_file(tmp_path):
    """Works without root: the kernel refuses writes past RLIMIT_FSIZE (EFBIG), like a quota."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        from glimpse.files import atomic_write_bytes
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        try:
            atomic_write_bytes({str(tmp_path / "view_00.png")!r}, bytes(200_000))
        except OSError as e:
            print(e)
            sys.exit(3)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "cannot write" in r.stdout and "view_00.png" in r.stdout and "too large" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folders(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FileExistsError, match="exists and is not a folder|already holds"):
        claim_folder(tmp_path, "file", ["view_00.png"], policy="refuse")
    with pytest.raises(OSError, match=r"cannot write .*file/view_00\.png"):
        atomic_write_bytes(blocker / "view_00.png", b"x")
    with pytest.raises(OSError, match="cannot create the output folder"):
        claim_folder(blocker.parent, "file/sub", ["view_00.png"])


def test_read_only_filesystem(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        with pytest.raises(OSError, match=r"cannot write .*view_00\.png: Read-only file system"):
            atomic_write_bytes(ro / "view_00.png", b"x")
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_claim_folder_never_overwrites(tmp_path):
    a = claim_folder(tmp_path, "run", ["view_00.png", "view_01.png"])
    (a / "view_00.png").write_bytes(b"old")
    assert claim_folder(tmp_path, "run", ["view_02.png"]) == a  # other views: same folder
    b = claim_folder(tmp_path, "run", ["view_00.png"])
    assert b == tmp_path / "run_001" and b.is_dir() and (a / "view_00.png").read_bytes() == b"old"
    with pytest.raises(FileExistsError, match="already holds view_00.png"):
        claim_folder(tmp_path, "run", ["view_00.png"], policy="refuse")


def fake_views(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, size, size, 3, generator=g)
    alpha = torch.zeros(n, size, size)
    alpha[:, 4:28, 4:28] = 1.0
    alpha[:, 4:28, 4:6] = 0.5
    return images, alpha, torch.rand(n, size, size, generator=g)


def test_save_view_set_files_metadata_and_manifest(tmp_path):
    images, alpha, conf = fake_views()
    cams = orbit_cameras(4, (32, 32))
    text = {"prompt": json.dumps({"1": {"class_type": "SaveViewSet"}}), "workflow": json.dumps({"nodes": []})}
    saved = save_view_set(tmp_path, "glimpse/a", images, alpha=alpha, confidence=conf, cameras=cams, png_text=text,
                          manifest={"parameters": {"threshold": 0.6}, "seed": 7})
    folder = tmp_path / "glimpse" / "a"
    assert saved.folder == folder and saved.images == [f"view_{i:02d}.png" for i in range(4)]
    with Image.open(folder / "view_02.png") as im:
        assert im.mode == "RGBA" and im.size == (32, 32)
        assert im.text["prompt"] == text["prompt"] and im.text["workflow"] == text["workflow"]
        px = np.asarray(im)
    assert np.array_equal(px[..., 3], (alpha[2] * 255).round().byte().numpy())
    assert np.array_equal(px[..., :3], (images[2] * 255).round().byte().numpy())
    with Image.open(folder / "confidence_02.png") as im:
        assert im.mode == "L"
    assert len(parse_cameras(json.loads((folder / "cameras.json").read_text()))) == 4
    m = json.loads((folder / "manifest.json").read_text())
    assert m["parameters"] == {"threshold": 0.6} and m["seed"] == 7
    assert [v["index"] for v in m["views"]] == [0, 1, 2, 3]
    assert m["views"][1]["sha256"] == sha256_file(folder / "view_01.png")
    assert m["views"][1]["confidence_sha256"] == sha256_file(folder / "confidence_01.png")
    assert set(m["chunks"][0]["inputs"]) == {"images", "mask", "confidence", "cameras"}
    assert leftovers(folder) == []


def test_chunks_share_a_folder_and_reruns_get_a_new_one(tmp_path):
    images, alpha, conf = fake_views()
    cams = orbit_cameras(4, (32, 32))

    def chunk(sel):
        part = type(cams)(**{**cams.__dict__, "intrinsics": cams.intrinsics[sel],
                             "world_to_camera": cams.world_to_camera[sel], "camera_to_world": cams.camera_to_world[sel],
                             "azimuth_deg": cams.azimuth_deg[sel], "elevation_deg": cams.elevation_deg[sel],
                             "view_index": torch.tensor(sel)})
        return save_view_set(tmp_path, "set", images[sel], alpha=alpha[sel], confidence=conf[sel], cameras=part)

    first, second = chunk([0, 1]), chunk([2, 3])
    assert first.folder == second.folder
    m = json.loads((first.folder / "manifest.json").read_text())
    assert [v["index"] for v in m["views"]] == [0, 1, 2, 3] and [c["views"] for c in m["chunks"]] == [[0, 1], [2, 3]]
    merged = parse_cameras(json.loads((first.folder / "cameras.json").read_text()))
    assert torch.allclose(merged.intrinsics, cams.intrinsics) and torch.allclose(merged.world_to_camera,
                                                                                 cams.world_to_camera, atol=1e-6)
    again = chunk([2, 3])
    assert again.folder == tmp_path / "set_001"
    assert json.loads((first.folder / "manifest.json").read_text()) == m  # the first results are untouched


def test_cameras_round_trip():
    cams = orbit_cameras(16, (256, 256))
    back = parse_cameras(cameras_to_json(cams))
    assert torch.allclose(back.intrinsics, cams.intrinsics)
    assert torch.allclose(back.camera_to_world, cams.camera_to_world, atol=1e-9)


def test_save_on_a_full_disk_keeps_finished_views_whole(tiny_fs):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(6, 96, 96, 3, generator=g)  # noise: about 28 KB per PNG, the disk holds two
    with pytest.raises(OSError, match=r"cannot write .*view_0\d\.png: No space left on device"):
        save_view_set(tiny_fs, "out", images)
    written = sorted(p.name for p in (tiny_fs / "out").iterdir())
    assert written and all(n.startswith("view_") and n.endswith(".png") for n in written)  # no temporary files
    for name in written:
        with Image.open(tiny_fs / "out" / name) as im:
            im.load()  # every file that is there is whole


def test_bad_shapes(tmp_path):
    images, alpha, conf = fake_views()
    with pytest.raises(ValueError, match="mask is"):
        save_view_set(tmp_path, "x", images, alpha=alpha[:, :16])
    with pytest.raises(ValueError, match="4 views but view indices"):
        save_view_set(tmp_path, "x", images, indices=[0, 1])
    with pytest.raises(ValueError, match="'..'"):
        save_view_set(tmp_path, "../x", images)


def test_workflow_facts():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl/base.safetensors"}},
        "2": {"class_type": "KSamplerAdvanced", "inputs": {"noise_seed": 42, "steps": 4, "model": ["1", 0]}},
        "3": {"class_type": "SaveViewSet", "inputs": {"subfolder": "glimpse", "images": ["2", 0]}},
    }
    facts = workflow_facts(prompt)
    assert facts["parameters"]["2 KSamplerAdvanced"] == {"noise_seed": 42, "steps": 4}
    assert facts["models"] == [{"node": "1", "class_type": "CheckpointLoaderSimple", "input": "ckpt_name",
                                "name": "sdxl/base.safetensors"}]
    assert facts["seeds"][0]["value"] == 42
    assert workflow_facts(None) == {"parameters": {}, "models": [], "seeds": []}

"""The fault-matrix cases that need LoadViewSet inside a real ComfyUI (the rest: tests/unit/test_fault_matrix.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

FOX = Path(__file__).resolve().parents[2] / "samples" / "fox"


def fox_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "fox"
    shutil.copytree(FOX, dst, ignore=shutil.ignore_patterns("clean", "*.md"))
    return dst


def test_load_view_set_warns_about_fully_transparent_views(comfy, tmp_path):
    s = fox_copy(tmp_path)
    with Image.open(s / "view_05.png") as im:
        rgba = np.asarray(im).copy()
    rgba[..., 3] = 0
    Image.fromarray(rgba).save(s / "view_05.png")
    images, mask, *_ = comfy.run("LoadViewSet", path=str(s), resolution=64, views_per_chunk=16)
    assert not mask[0][5].any() and mask[0][4].any()
    assert "LoadViewSet: view_05 fully transparent (alpha 0 everywhere): nothing of it is enhanced" in comfy.log()


def test_load_view_set_names_a_corrupt_exr_instead_of_raising(comfy, tmp_path):
    s = fox_copy(tmp_path)
    (s / "view_03_depth.npz").unlink()
    (s / "view_03_depth.exr").write_bytes(b"\x76\x2f\x31\x01" + b"garbage" * 10)
    message = comfy.pack["LoadViewSet"].validate_inputs(path=str(s))
    assert message.startswith(f"view_03 depth: {s / 'view_03_depth.exr'} is not a readable depth file"), message

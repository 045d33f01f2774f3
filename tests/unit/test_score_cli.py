"""``glimpse-enhance score`` on the bundled fox sample (samples/fox): ranking, fallbacks and bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from glimpse.cli import main

FOX = Path(__file__).resolve().parents[2] / "samples" / "fox"


def run_score(capsys, *argv):
    rc = main(["score", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_clean_views_rank_more_consistent_and_sharper(capsys, tmp_path):
    rc, out, _ = run_score(capsys, FOX / "clean", "--set", FOX, "--json", tmp_path / "clean.json")
    assert rc == 0
    clean = json.loads(out)
    assert json.loads((tmp_path / "clean.json").read_text()) == clean  # --json writes the same object
    rc, out, _ = run_score(capsys, FOX, "--set", FOX)
    degraded = json.loads(out)
    print("clean", clean["consistency"], clean["sharpness_gain"])
    print("degraded", degraded["consistency"], degraded["sharpness_gain"])
    for r in (clean, degraded):
        assert {"psnr", "mae"} <= set(r["consistency"]) and len(r["per_view"]) == 16
        assert r["colour_drift"] is not None and r["notes"] == []
    assert clean["consistency"]["psnr"] > degraded["consistency"]["psnr"] + 1.0
    assert clean["consistency"]["mae"] < 0.6 * degraded["consistency"]["mae"]
    assert clean["sharpness_gain"] > 5.0
    # the input scored against itself: no gain, no drift, and the reference ceiling is its own score
    assert degraded["sharpness_gain"] == 1.0 and degraded["colour_drift"] == 0.0
    assert degraded["reference"]["consistency"]["psnr"] == degraded["consistency"]["psnr"]


def test_views_at_another_resolution_are_resized(capsys, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(16):
        with Image.open(FOX / "clean" / f"view_{i:02d}.png") as im:
            im.resize((512, 512), Image.LANCZOS).save(big / f"view_{i:02d}.png")
    rc, out, _ = run_score(capsys, big, "--set", FOX)
    assert rc == 0
    r = json.loads(out)
    assert r["size"] == [256, 256] and r["consistency"]["psnr"] > 35


def copy_set(tmp_path, depth=True):
    dst = tmp_path / "set"
    dst.mkdir()
    for p in FOX.iterdir():
        if p.is_file() and (depth or "_depth" not in p.name):
            shutil.copy(p, dst / p.name)
    return dst


def test_missing_depth_falls_back_and_says_so(capsys, tmp_path):
    nodepth = copy_set(tmp_path, depth=False)
    rc, out, err = run_score(capsys, FOX / "clean", "--set", nodepth)
    assert rc == 0
    r = json.loads(out)
    assert r["consistency"] is None and r["sharpness_gain"] > 1 and r["colour_drift"] is not None
    assert "no depth" in r["notes"][0] and "no depth" in err


def test_views_without_depth_are_named_and_their_pairs_skipped(capsys, tmp_path):
    partial = copy_set(tmp_path)
    (partial / "view_03_depth.npz").unlink()
    rc, out, err = run_score(capsys, FOX / "clean", "--set", partial)
    assert rc == 0
    r = json.loads(out)
    assert "view_03" in r["notes"][0] and "view_03" in err
    assert r["consistency"]["pairs_scored"] == 32 - 4  # (1,3) (2,3) (3,4) (3,5) have no depth on view 3's side
    assert r["per_view"][3]["sharpness_gain"] is not None


def test_count_and_size_mismatches_name_the_file(capsys, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for i in range(15):
        shutil.copy(FOX / "clean" / f"view_{i:02d}.png", few / f"view_{i:02d}.png")
    rc, _, err = run_score(capsys, few, "--set", FOX)
    assert rc == 2 and "15 views but the set has 16" in err and "missing view_15.png" in err

    mixed = tmp_path / "mixed"
    shutil.copytree(FOX / "clean", mixed)
    Image.new("RGB", (128, 128)).save(mixed / "view_03.png")
    rc, _, err = run_score(capsys, mixed, "--set", FOX)
    assert rc == 2 and "view_03.png is 128x128 but view_00.png is 256x256" in err

    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(16):
        Image.new("RGB", (512, 256)).save(wide / f"view_{i:02d}.png")
    rc, _, err = run_score(capsys, wide, "--set", FOX)
    assert rc == 2 and "view_00.png is 512x256 but the set's views are 256x256: different aspect ratio" in err

    broken = tmp_path / "broken"
    shutil.copytree(FOX / "clean", broken)
    (broken / "view_05.png").write_bytes(b"not a png")
    rc, _, err = run_score(capsys, broken, "--set", FOX)
    assert rc == 2 and "view_05.png" in err

    rc, _, err = run_score(capsys, tmp_path / "nope", "--set", FOX)
    assert rc == 2 and "VIEWS_DIR is not a folder" in err


def test_console_script_prints_one_json_object(tmp_path):
    out = subprocess.run([sys.executable, "-m", "glimpse.cli", "score", str(FOX), "--set", str(FOX)],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    assert np.isfinite(r["consistency"]["psnr"])

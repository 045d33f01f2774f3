"""The release fault matrix: bad input, data loss and leaks, one test per case, none of them needing ComfyUI.

Every runner case here is decided before any server is contacted: the server given is a closed port, so a case that
reached the server stage would end with "is unreachable" instead of its own message. The cases that need a real
server (cleanup of an embedded server on SIGTERM, the node's warning, where a --server run leaves files) are in
tests/comfy/test_runner.py.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from glimpse.cli import main
from glimpse.model_files import read_safetensors_header
from glimpse.runner.prepare import prepare
from glimpse.runner.run import RunOptions, run
from glimpse.scan import scan_view_set
from glimpse.view_images import MAX_VIEW_PIXELS
from glimpse.viewset import load_view_set

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
NO_SERVER = "127.0.0.1:1"


@pytest.fixture
def fox(tmp_path) -> Path:
    """A copy of the fox sample set (its top-level files)."""
    dst = tmp_path / "fox"
    shutil.copytree(FOX, dst, ignore=shutil.ignore_patterns("clean", "*.md"))
    return dst


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def runner(viewset: Path, out: Path, *, workflow: str | Path = "t4", **overrides) -> tuple[int, str]:
    stream = io.StringIO()
    code = run(RunOptions(viewset, out, [NO_SERVER], str(workflow), overrides=overrides, stream=stream))
    return code, stream.getvalue()


def refused_before_any_server(code: int, err: str, *needles: str) -> None:
    assert code == 2 and "unreachable" not in err, err
    for needle in needles:
        assert needle in err, err


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header states width x height with one tiny IDAT: what a bomb looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def corrupt_pixels(png: Path) -> None:
    """Zero the first IDAT chunk's data and fix its CRC: the header and checksums pass, the pixels do not decode."""
    data = bytearray(png.read_bytes())
    pos = data.index(b"IDAT") + 4
    length = int.from_bytes(data[pos - 8:pos - 4], "big")
    data[pos:pos + length] = bytes(length)
    data[pos + length:pos + length + 4] = zlib.crc32(bytes(data[pos - 4:pos + length])).to_bytes(4, "big")
    png.write_bytes(bytes(data))


def png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG of ``values`` uint16 [H,W,C] (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); Pillow cannot write them."""
    h, w, c = values.shape
    raw = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# -- data loss and leaks ---------------------------------------------------------------------------------------------

def test_out_equal_to_the_set_is_refused_before_anything_is_written(fox):
    before = snapshot(fox)
    code, err = runner(fox, fox)
    refused_before_any_server(code, err, f"output folder {fox} is the view set {fox}")
    assert snapshot(fox) == before


def test_out_inside_the_set_is_refused(fox):
    before = snapshot(fox)
    code, err = runner(fox, fox / "out")
    refused_before_any_server(code, err, "lies inside the view set")
    assert snapshot(fox) == before and not (fox / "out").exists()


def test_a_set_inside_out_is_refused(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(FOX, out / "fox", ignore=shutil.ignore_patterns("clean", "*.md"))
    before = snapshot(out)
    code, err = runner(out / "fox", out)
    refused_before_any_server(code, err, "holds the view set")
    assert snapshot(out) == before


def test_a_folder_of_sets_written_into_itself_is_refused(tmp_path):
    sets = tmp_path / "sets"
    for name in ("a", "b"):
        shutil.copytree(FOX, sets / name, ignore=shutil.ignore_patterns("clean", "*.md"))
    before = snapshot(sets)
    code, err = runner(sets, sets)  # one sub-folder per set: sets/a/ would be written into set a
    refused_before_any_server(code, err, f"output folder {sets / 'a'} is the view set")
    assert snapshot(sets) == before


def test_a_view_linked_out_of_the_set_is_refused_and_named(fox, tmp_path):
    (fox / "view_07.png").unlink()
    os.symlink("/etc/passwd", fox / "view_07.png")
    (fox / "view_03_mask.png").unlink()
    os.symlink("/etc/hostname", fox / "view_03_mask.png")
    code, err = runner(fox, tmp_path / "out")
    refused_before_any_server(code, err, "view_07.png -> /etc/passwd", "view_03_mask.png -> /etc/hostname",
                              "2 file(s) of the set are links leading out of its folder")


def test_only_the_sets_own_files_are_uploaded(fox, tmp_path):
    os.symlink("/etc/passwd", fox / "passwd.json")  # a stray file: not part of the set, so never read nor sent
    (fox / "notes.png").write_bytes(b"a stray image")
    (fox / "clean").mkdir()
    shutil.copy(FOX / "clean" / "view_00.png", fox / "clean")
    job, = prepare(RunOptions(fox, tmp_path / "out", [NO_SERVER], "t4")).jobs
    names = sorted(p.name for p in job.files)
    assert names == sorted(["cameras.json"] + [f"view_{i:02d}{end}" for i in range(16)
                                               for end in (".png", "_depth.npz", "_mask.png")])
    assert all(p.parent == fox for p in job.files)


def test_a_killed_runs_embedded_folder_is_removed_by_the_next_start(tmp_path):
    from glimpse.runner.embedded import remove_stale_bases

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / "glimpse-comfy-killed"
    (stale / "input" / "glimpse").mkdir(parents=True)
    (stale / "runner.pid").write_text(f"{gone.pid}\n")
    live = tmp_path / "glimpse-comfy-running"
    live.mkdir()
    (live / "runner.pid").write_text(f"{os.getpid()}\n")
    unknown = tmp_path / "glimpse-comfy-older"  # no pid file: not ours to judge
    unknown.mkdir()
    assert remove_stale_bases(tmp_path) == [stale]
    assert not stale.exists() and live.is_dir() and unknown.is_dir()


# -- checked locally, with the user's paths --------------------------------------------------------------------------

def test_a_bad_set_is_refused_here_with_the_users_path(fox, tmp_path):
    np.savez_compressed(fox / "view_07_depth.npz", depth=np.ones((128, 128), np.float32))
    code, err = runner(fox, tmp_path / "out")
    refused_before_any_server(code, err, "view_07 depth is 128x128 but its image is 256x256")
    assert not (tmp_path / "out").exists()


def test_a_bad_set_ends_the_command_before_any_server_starts(fox, tmp_path):
    """Without --server a valid set would start an embedded ComfyUI; a bad one never gets that far."""
    (fox / "view_09_mask.png").write_bytes(b"not an image")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "glimpse.cli", "run", str(fox), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, env=dict(os.environ, COMFYUI_PATH="/nonexistent"))
    print(f"bad set: start to error {time.monotonic() - t0:.2f} s")
    assert r.returncode == 2 and "starting ComfyUI" not in r.stderr and "no ComfyUI found" not in r.stderr
    assert f"view_09 mask: {fox / 'view_09_mask.png'} is not a readable image" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("option, value, message", [
    ("preset", "t5_fast", "--preset: 't5_fast' is not a preset; expected one of t4_balanced"),
    ("template", "portrait", "--template: unknown prompt template 'portrait' (built-in: default"),
    ("steps", 3, "--steps: steps 3 is not an SDXL-Lightning step count"),
    ("strength", 1.5, "--strength: strength 1.5 is outside (0, 1]"),
    ("resolution", 100, "--resolution: 100 is not 0 (native size) nor a multiple of 64"),
])
def test_unknown_option_values_are_refused_before_any_server(fox, tmp_path, option, value, message):
    code, err = runner(fox, tmp_path / "out", **{option: value})
    refused_before_any_server(code, err, message)


def test_a_stray_huge_view_index_is_a_gap_not_a_memory_error(fox):
    shutil.copy(fox / "view_00.png", fox / "view_9999999999.png")
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"gap: .*highest view_9999999999\.png\); views must run view_00\.\."):
            scan_view_set(fox)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"scan with view_9999999999.png: peak {peak / 2**20:.2f} MiB traced")
    assert peak < 16 * 2**20


def test_a_view_above_the_pixel_limit_is_named(fox, tmp_path):
    png_header_only(fox / "view_04.png", 30000, 30000)
    with pytest.raises(ValueError, match=r"view_04 image: .*view_04\.png is above the limit of 151 Mpx per image"):
        scan_view_set(fox)
    png_header_only(fox / "view_04.png", 13000, 12000)  # under PIL's own bomb limit, over ours
    with pytest.raises(ValueError, match=r"view_04 image: .*view_04\.png is 13000x12000 \(156 Mpx\), above the limit"):
        scan_view_set(fox)
    assert MAX_VIEW_PIXELS == 12288 * 12288


def test_huge_views_are_decoded_at_reduced_size(tmp_path):
    """Two 4608x4608 views loaded at 64 px: box-reduced right after decoding, never a full-size numpy copy."""
    s = tmp_path / "big"
    s.mkdir()
    size = 4608
    cams = json.loads((FOX / "cameras.json").read_text())
    cams["views"] = cams["views"][:2]
    for v in cams["views"]:
        v["image_size"] = [size, size]
        v["K"] = [[k * size / 256 if i < 2 else k for k in row] for i, row in enumerate(v["K"])]
    (s / "cameras.json").write_text(json.dumps(cams))
    left = np.zeros((size, size, 4), np.uint8)
    left[:, : size // 2] = (200, 40, 20, 255)  # left half opaque red-ish, right half transparent
    for i in range(2):
        Image.fromarray(left).save(s / f"view_{i:02d}.png", compress_level=1)
    tracemalloc.start()
    try:
        vs = load_view_set(s, resolution=64, background="#808080")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"two {size}^2 views at 64 px: peak {peak / 2**20:.1f} MiB traced (one full 8-bit copy: "
          f"{size * size * 4 / 2**20:.0f} MiB)")
    assert peak < size * size * 4 / 2
    assert vs.images.shape == (2, 64, 64, 3)
    assert torch.allclose(vs.images[0, 32, 8], torch.tensor([200, 40, 20]) / 255.0, atol=2 / 255)
    assert torch.allclose(vs.images[0, 32, 56], torch.full((3,), 128 / 255.0), atol=2 / 255)
    assert vs.alpha[0, 32, 8] == 1.0 and vs.alpha[0, 32, 56] == 0.0


# -- one-line errors naming the file, never a traceback ---------------------------------------------------------------

def test_a_non_utf8_file_name_in_a_set_is_no_traceback(fox, tmp_path):
    odd = Path(os.fsdecode(os.fsencode(fox) + b"/caf\xe9.png"))
    odd.write_bytes(b"a stray file with a Latin-1 name")
    code, err = runner(fox, tmp_path / "out", workflow="t4")
    assert code == 2 and "is unreachable" in err, err  # the set passed every local check
    job, = prepare(RunOptions(fox, tmp_path / "out", [NO_SERVER], "t4")).jobs
    assert odd not in job.files


def test_a_view_whose_pixels_do_not_decode_is_named(fox, tmp_path):
    """Header and checksums intact (the header scan passes it), pixel data not a zlib stream: the runner's decode of
    the alpha finds it before any server does."""
    corrupt_pixels(fox / "view_06.png")
    scan_view_set(fox)  # headers only: fine
    code, err = runner(fox, tmp_path / "out")
    refused_before_any_server(code, err, f"view_06 image: {fox / 'view_06.png'}", "cannot be decoded")
    assert not (tmp_path / "out").exists()


def test_a_corrupt_exr_depth_is_named(fox, tmp_path):
    (fox / "view_03_depth.npz").unlink()
    (fox / "view_03_depth.exr").write_bytes(b"\x76\x2f\x31\x01" + b"garbage" * 10)
    with pytest.raises(ValueError, match=r"view_03 depth: .*view_03_depth\.exr is not a readable depth file"):
        scan_view_set(fox)
    code, err = runner(fox, tmp_path / "out")
    refused_before_any_server(code, err, "view_03_depth.exr is not a readable depth file")


@pytest.mark.parametrize("damage", ["exr", "bomb", "index", "pixels"])
def test_score_on_a_bad_set_is_one_line(fox, capsys, damage):
    if damage == "exr":
        (fox / "view_03_depth.npz").unlink()
        (fox / "view_03_depth.exr").write_bytes(b"\x76\x2f\x31\x01" + b"garbage" * 10)
    elif damage == "bomb":
        png_header_only(fox / "view_04.png", 30000, 30000)
    elif damage == "pixels":
        corrupt_pixels(fox / "view_04.png")
    else:
        shutil.copy(fox / "view_00.png", fox / "view_9999999999.png")
    assert main(["score", str(FOX / "clean"), "--set", str(fox)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("glimpse-enhance score: error: ") and str(fox) in err


@pytest.mark.parametrize("cut", ["data", "header"])
def test_a_truncated_safetensors_file_is_named_before_any_load(tmp_path, cut):
    p = tmp_path / "lora.safetensors"
    save_file({"a": torch.zeros(64, 64), "b": torch.ones(8)}, str(p))
    data = p.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    p.write_bytes(data[:-100] if cut == "data" else data[:8 + n // 2])
    with pytest.raises(ValueError, match=r"lora\.safetensors (is truncated|is not a safetensors file)"):
        read_safetensors_header(p)


# -- silently wrong data ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_views_load_by_value(fox, channels):
    """Grey, grey+alpha, RGB and RGBA 16-bit PNGs: 65535 is white, 32768 mid-grey, never clipped to white."""
    values = np.zeros((256, 256, channels), np.uint16)
    values[..., :] = 32896  # 128/255 of full scale
    values[:, :128, 0] = 65535
    if channels in (2, 4):
        values[..., -1] = 65535
    png16(fox / "view_05.png", values)
    (fox / "view_05_mask.png").unlink()  # opaque without alpha of its own
    vs = load_view_set(scan_view_set(fox), resolution=0, background="#000000", views=[5])
    left, right = vs.images[0, 100, 20], vs.images[0, 100, 200]
    assert left[0] == 1.0 and right.tolist() == pytest.approx([128 / 255] * 3, abs=1 / 255)


def test_a_16_bit_mask_loads_by_value(tmp_path):
    s = tmp_path / "rgb"
    s.mkdir()
    for name in ("cameras.json", "view_00.png", "view_01.png"):
        shutil.copy(FOX / name, s)
    cams = json.loads((s / "cameras.json").read_text())
    cams["views"] = cams["views"][:2]
    (s / "cameras.json").write_text(json.dumps(cams))
    for i in range(2):
        with Image.open(s / f"view_{i:02d}.png") as im:
            im.convert("RGB").save(s / f"view_{i:02d}.png")
    mask = np.full((256, 256, 1), 32896, np.uint16)
    png16(s / "view_01_mask.png", mask)
    vs = load_view_set(s, resolution=0)
    assert vs.alpha[1].unique().tolist() == pytest.approx([128 / 255], abs=1 / 255)


def test_complex_depth_is_refused(fox, tmp_path):
    np.save(fox / "view_02_depth.npy", np.ones((256, 256), np.complex64))
    (fox / "view_02_depth.npz").unlink()
    with pytest.raises(ValueError, match=r"view_02 depth: .*view_02_depth\.npy holds complex64 values; depth must be "
                                         r"real numbers"):
        scan_view_set(fox)
    np.savez(fox / "view_02_depth.npz", depth=np.ones((256, 256), np.complex128))
    (fox / "view_02_depth.npy").unlink()
    with pytest.raises(ValueError, match=r"view_02_depth\.npz holds complex128 values"):
        scan_view_set(fox)


def test_fully_transparent_views_are_named_by_the_runner(fox, tmp_path):
    for i in (5, 11):
        with Image.open(fox / f"view_{i:02d}.png") as im:
            rgba = np.asarray(im).copy()
        rgba[..., 3] = 0
        Image.fromarray(rgba).save(fox / f"view_{i:02d}.png")
    code, err = runner(fox, tmp_path / "out")
    assert code == 2 and "is unreachable" in err, err  # a warning, not an error: the run goes on to the server
    assert f"warning: {fox}: view_05, view_11 fully transparent (alpha 0 everywhere)" in err


# -- signals ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_the_runner_stops_cleanly_even_when_it_inherited_sigint_ignored(fox, tmp_path, sig, code):
    """A background job inherits SIGINT ignored; the runner handles both signals itself (here while it waits on a
    server that accepts the connection but never answers)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "glimpse.cli", "run", str(fox), "--out", str(out), "--server",
         f"127.0.0.1:{silent.getsockname()[1]}"], stderr=subprocess.PIPE, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stderr.readline().startswith("workflow ")  # prepared: now waiting for the server's answer
        proc.send_signal(sig)
        err = proc.communicate(timeout=30)[1]
    finally:
        proc.kill()
        silent.close()
    assert proc.returncode == code, err
    assert "missing views (rerun the same command to resume): fox: 0-15" in err
    assert json.loads((out / "manifest.json").read_text())["missing_views"] == list(range(16))

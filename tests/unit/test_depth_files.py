"""Depth files read by glimpse.depth_files: an .npz member inflated in one call gives what numpy's loader gives."""
import zlib as stdlib_zlib

import numpy as np
import pytest

from glimpse import depth_files
from glimpse.depth_files import read_depth


@pytest.mark.parametrize("array", [
    np.where(np.arange(96 * 80).reshape(96, 80) % 7 < 3, 0.0, np.linspace(1, 3, 96 * 80).reshape(96, 80)).astype(
        np.float32),
    np.asfortranarray(np.random.default_rng(0).random((64, 48))),  # float64, Fortran order
    np.arange(40 * 30, dtype=">i2").reshape(40, 30, 1),  # big-endian integers with a channel axis
])
@pytest.mark.parametrize("save", [np.savez_compressed, np.savez])
@pytest.mark.parametrize("inflate", ["installed", "stdlib"])
def test_npz_depth_is_what_numpy_loads(tmp_path, monkeypatch, array, save, inflate):
    if inflate == "stdlib":
        monkeypatch.setattr(depth_files, "zlib", stdlib_zlib)
    path = tmp_path / "view_00_depth.npz"
    save(path, other=np.zeros(3), depth=array)
    out = read_depth(path, None, "view_00 depth")
    expected = np.load(path)["depth"]
    expected = (expected[..., 0] if expected.ndim == 3 else expected).astype(np.float32)
    assert out.dtype == np.float32 and out.flags.writeable and np.array_equal(out, expected)


def test_a_corrupt_compressed_npz_is_named(tmp_path):
    path = tmp_path / "view_04_depth.npz"
    np.savez_compressed(path, depth=np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128))
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the deflated stream
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"view_04 depth: .*view_04_depth\.npz could not be read \(.*\)"):
        read_depth(path, None, "view_04 depth")


def test_an_npz_of_python_objects_is_refused(tmp_path):
    path = tmp_path / "view_01_depth.npz"
    np.savez_compressed(path, depth=np.array([[1.0, None]], dtype=object))
    with pytest.raises(ValueError, match=r"view_01 depth: .*view_01_depth\.npz could not be read \(.*objects"):
        read_depth(path, None, "view_01 depth")

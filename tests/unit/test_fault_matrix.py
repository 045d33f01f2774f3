"""The release fault matrix: bad input, data loss and leaks, one test per case, none of them needing a server.

Every runner case here exits before any server is contacted: the server URL given is a closed port, so a case that
reached the server stage would fail with "unreachable" instead of its own message.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from glimpse.runner.run import RunOptions, run

REPO = Path(__file__).resolve().parents[2]
FOX = REPO / "samples" / "fox"
NO_SERVER = "127.0.0.1:1"
PER_VIEW = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


@pytest.fixture
def fox(tmp_path) -> Path:
    """A copy of the fox sample set (top-level files)."""
    dst = tmp_path / "fox"
    shutil.copytree(FOX, dst, ignore=shutil.ignore_patterns("clean", "*.md"))
    return dst


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def runner(viewset: Path, out: Path, *, workflow: str | Path = "t4", **overrides) -> tuple[int, str]:
    stream = io.StringIO()
    code = run(RunOptions(viewset, out, [NO_SERVER], str(workflow), overrides=overrides, stream=stream))
    return code, stream.getvalue()


# -- data loss -------------------------------------------------------------------------------------------------------

def test_out_equal_to_the_set_is_refused_before_anything_is_written(fox):
    before = snapshot(fox)
    code, err = runner(fox, fox)
    assert code == 2 and f"output folder {fox} is the view set {fox}" in err, err
    assert snapshot(fox) == before


def test_out_inside_the_set_is_refused(fox):
    before = snapshot(fox)
    code, err = runner(fox, fox / "out")
    assert code == 2 and "lies inside the view set" in err, err
    assert snapshot(fox) == before and not (fox / "out").exists()


def test_a_set_inside_out_is_refused(tmp_path):
    out = tmp_path / "out"
    shutil.copytree(FOX, out / "fox", ignore=shutil.ignore_patterns("clean", "*.md"))
    before = snapshot(out)
    code, err = runner(out / "fox", out)
    assert code == 2 and "holds the view set" in err, err
    assert snapshot(out) == before


def test_a_folder_of_sets_written_into_itself_is_refused(tmp_path):
    sets = tmp_path / "sets"
    for name in ("a", "b"):
        shutil.copytree(FOX, sets / name, ignore=shutil.ignore_patterns("clean", "*.md"))
    before = snapshot(sets)
    code, err = runner(sets, sets)  # one sub-folder per set: sets/a/ would be written into set a
    assert code == 2 and f"output folder {sets / 'a'} is the view set" in err, err
    assert snapshot(sets) == before

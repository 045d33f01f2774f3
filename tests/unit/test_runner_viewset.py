"""View sets as the runner finds, checks and uploads them: exactly the files the library's scan accepts."""
import os
import shutil
from pathlib import Path

import pytest

from glimpse.files import files_digest
from glimpse.runner.viewset import ViewSetError, check_set, find_viewsets

FOX = Path(__file__).resolve().parents[2] / "samples" / "fox"


def make_set(folder: Path) -> Path:
    shutil.copytree(FOX, folder, ignore=shutil.ignore_patterns("*.md"))  # keeps the clean/ sub-folder
    (folder / "notes.txt").write_text("not uploaded")
    (folder / "extra.json").write_text("{}")
    return folder


def test_the_files_are_those_the_scan_accepted(tmp_path):
    s = make_set(tmp_path / "set")
    names = sorted(p.name for p in check_set(s).files())
    assert len(names) == 16 * 3 + 1 and "cameras.json" in names and "view_03_depth.npz" in names
    assert "notes.txt" not in names and "extra.json" not in names and "clean" not in names
    images = sorted(p.name for p in check_set(s, images_only=True).files())  # image workflows need no depth/cameras
    assert images == sorted(f"view_{i:02d}{end}" for i in range(16) for end in (".png", "_mask.png"))


def test_hash_follows_content(tmp_path):
    s = make_set(tmp_path / "set")
    h = files_digest(check_set(s).files(), contents=True)
    assert files_digest(check_set(s).files(), contents=True) == h
    (s / "notes.txt").write_text("changed, but not part of the set")
    assert files_digest(check_set(s).files(), contents=True) == h
    (s / "view_02_mask.png").write_bytes((s / "view_03_mask.png").read_bytes())
    assert files_digest(check_set(s).files(), contents=True) != h


def test_links_inside_the_set_are_fine_and_links_out_are_refused(tmp_path):
    s = make_set(tmp_path / "set")
    (s / "view_04_mask.png").unlink()
    os.symlink("view_05_mask.png", s / "view_04_mask.png")
    assert len(check_set(s).files()) == 49
    outside = tmp_path / "elsewhere.png"
    shutil.move(s / "view_07.png", outside)
    os.symlink(outside, s / "view_07.png")
    with pytest.raises(ViewSetError, match=rf"view_07.png -> {outside}"):
        check_set(s)


def test_folder_of_sets_and_errors(tmp_path):
    make_set(tmp_path / "sets" / "b")
    make_set(tmp_path / "sets" / "a")
    (tmp_path / "sets" / "empty").mkdir()
    assert [p.name for p in find_viewsets(tmp_path / "sets")] == ["a", "b"]
    assert find_viewsets(tmp_path / "sets" / "a") == [tmp_path / "sets" / "a"]
    with pytest.raises(ViewSetError, match="neither a view set"):
        find_viewsets(tmp_path / "sets" / "empty")
    with pytest.raises(ViewSetError, match="does not exist"):
        find_viewsets(tmp_path / "nope")

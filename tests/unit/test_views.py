"""View set listing, hashing, chunking and selection strings as the runner uses them."""
import json

import pytest

from glimpse.runner.viewset import (ViewSetError, chunk_views, files_hash, find_viewsets, parse_selection,
                                    selection_string, view_indices, viewset_files)


def make_set(folder, n=4):
    folder.mkdir(parents=True)
    for i in range(n):
        (folder / f"view_{i:02d}.png").write_bytes(b"png%d" % i)
        (folder / f"view_{i:02d}_depth.npz").write_bytes(b"npz%d" % i)
    (folder / "cameras.json").write_text(json.dumps({"views": [{}] * n}))
    (folder / "clean").mkdir()
    (folder / "clean" / "view_00.png").write_bytes(b"gt")
    (folder / "notes.txt").write_text("not uploaded")
    return folder


def test_files_are_the_top_level_view_set_files(tmp_path):
    s = make_set(tmp_path / "set")
    names = [p.name for p in viewset_files(s)]
    assert names == sorted(names) and "cameras.json" in names and "view_03_depth.npz" in names
    assert "notes.txt" not in names and "clean" not in names and len(names) == 9
    assert view_indices(s) == [0, 1, 2, 3]


def test_hash_follows_content(tmp_path):
    s = make_set(tmp_path / "set")
    h = files_hash(viewset_files(s))
    assert files_hash(viewset_files(s)) == h
    (s / "view_02.png").write_bytes(b"changed")
    assert files_hash(viewset_files(s)) != h


def test_strip_set_counts_views_from_cameras(tmp_path):
    s = tmp_path / "strip"
    s.mkdir()
    (s / "strip.png").write_bytes(b"x")
    (s / "cameras.json").write_text(json.dumps({"views": [{}] * 16}))
    assert view_indices(s) == list(range(16))


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


def test_chunks():
    assert chunk_views(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_views([1, 5, 9], 1) == [[1], [5], [9]]
    with pytest.raises(ValueError):
        chunk_views([1], 0)


@pytest.mark.parametrize("views,text", [([4, 5, 6, 7], "4-7"), ([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"), ([3], "3"),
                                        ([1, 3, 5], "1,3,5")])
def test_selection_string_round_trip(views, text):
    assert selection_string(views) == text
    assert parse_selection(text, 16) == views


def test_parse_selection_errors():
    assert parse_selection("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside 0-15"):
        parse_selection("14-16", 16)
    with pytest.raises(ValueError, match="bad view selection 'x'"):
        parse_selection("1,x", 16)

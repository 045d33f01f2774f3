"""View names, selections and chunks (glimpse.views), as LoadViewSet and the runner share them."""
import pytest

from glimpse.views import chunk_views, chunks, parse_selection, select_views, selection_string, view_indices


def test_one_view_file_pattern():
    names = ["view_00.png", "VIEW_01.PNG", "view_02.jpg", "view_03.webp", "view_04_depth.png", "view_5.png", "x.png"]
    assert view_indices(names) == {0: "view_00.png", 1: "VIEW_01.PNG", 5: "view_5.png"}
    with pytest.raises(ValueError, match=r"view index 1 appears twice \(view_01.png, view_001.png\)"):
        view_indices(["view_01.png", "view_001.png"])


def test_chunks():
    assert chunk_views(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert chunk_views([1, 5, 9], 1) == [[1], [5], [9]]
    assert chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)] and chunks(5, 0) == [slice(0, 5)]
    with pytest.raises(ValueError):
        chunk_views([1], 0)


@pytest.mark.parametrize("views,text", [([4, 5, 6, 7], "4-7"), ([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"), ([3], "3"),
                                        ([1, 3, 5], "1,3,5")])
def test_selection_string_round_trip(views, text):
    assert selection_string(views) == text
    assert parse_selection(text, 16) == views
    assert select_views(text, 16) == views


def test_parse_selection_errors():
    assert parse_selection("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside 0-15"):
        parse_selection("14-16", 16)
    with pytest.raises(ValueError, match="bad view selection 'x'"):
        parse_selection("1,x", 16)
    with pytest.raises(ValueError, match=r"views: \[16\] outside 0-15"):
        select_views([3, 16], 16)

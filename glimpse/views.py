"""Views of a set by index: the view-file name, selections ("0-3,8") and chunks. Plain Python (no torch, no numpy).

One name pattern for the whole pack: a view image is ``view_XX.png`` (XX = 00..N-1, case-insensitive, PNG only:
LoadViewSet, the runner and ``glimpse-enhance score`` all read it with :data:`VIEW_RE`).
"""
from __future__ import annotations

import re
from typing import Sequence

VIEW_RE = re.compile(r"^view_(\d+)\.png$", re.IGNORECASE)


def view_name(index: int) -> str:
    """``view_07`` (the stem every file of view 7 starts with)."""
    return f"view_{index:02d}"


def view_indices(names: Sequence[str]) -> dict[int, str]:
    """{index: file name} of the view images among ``names``; ValueError when one index has two files."""
    found: dict[int, str] = {}
    for name in names:
        m = VIEW_RE.match(name)
        if m:
            i = int(m.group(1))
            if i in found:
                raise ValueError(f"view index {i} appears twice ({found[i]}, {name})")
            found[i] = name
    return found


def parse_selection(text: str, count: int) -> list[int]:
    """'all' | '0-3,8' -> sorted unique indices below ``count`` (ValueError naming the bad part)."""
    text = text.strip().lower()
    if text in ("", "all"):
        return list(range(count))
    out = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad view selection '{part}' (expected e.g. 0-3,8)")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a > b or b >= count:
            raise ValueError(f"view selection '{part}' is outside 0-{count - 1}")
        out.update(range(a, b + 1))
    return sorted(out)


def select_views(views: str | Sequence[int] | None, count: int) -> list[int]:
    """'all' / None / '0-3,8' / a list of indices -> sorted unique view indices of a set of ``count`` views."""
    if views is None or isinstance(views, str):
        try:
            return parse_selection(views or "all", count)
        except ValueError as e:
            raise ValueError(f"views: {e} (the set has {count} views)") from None
    out = sorted({int(i) for i in views})
    bad = [i for i in out if not 0 <= i < count]
    if bad or not out:
        raise ValueError(f"views: {bad or 'empty selection'} outside 0-{count - 1}")
    return out


def selection_string(views: list[int]) -> str:
    """[0,1,2,3,8,10,11] -> '0-3,8,10-11' (the syntax of :func:`parse_selection`)."""
    if not views:
        raise ValueError("empty view selection")
    parts, start, prev = [], views[0], views[0]
    for v in views[1:] + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ",".join(parts)


def chunks(count: int, size: int) -> list[slice]:
    """Slices cutting ``count`` views into chunks of at most ``size`` (``size`` < 1: one chunk)."""
    size = count if size < 1 else size
    return [slice(i, min(i + size, count)) for i in range(0, count, size)]


def chunk_views(views: list[int], size: int) -> list[list[int]]:
    """Split ``views`` (in order) into chunks of at most ``size`` (at least 1)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [views[c] for c in chunks(len(views), size)]

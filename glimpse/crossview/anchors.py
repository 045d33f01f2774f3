"""Anchor views: which views of a set are anchors, which anchors each view attends to, and the chunk order.

Anchors are chosen from the cameras alone (never from pixels), so every chunk, prompt and server of a set agrees on
them: farthest-point sampling over the views' viewing directions, starting at view 0, ties to the lower index. For
SyncDreamer's 16-view orbit and 4 anchors that is views 0, 4, 8 and 12 (90 degrees apart). A view attends to the
anchors whose viewing direction is closest to its own (an anchor to the closest *other* anchors).
"""
from __future__ import annotations

import torch

from ..runner.viewset import parse_selection  # moves to the library's selection module (issue 15)
from ..types import Cameras

DEFAULT_ANCHOR_COUNT = 4
DEFAULT_NEIGHBOURS = 2


def viewing_directions(cameras: Cameras) -> torch.Tensor:
    """Unit forward (+z) axes of the cameras in world coordinates [N,3]: row 3 of each world-to-camera rotation."""
    d = cameras.world_to_camera[:, 2, :3].to(torch.float64)
    return d / d.norm(dim=-1, keepdim=True)


def choose_anchors(cameras: Cameras, count: int = DEFAULT_ANCHOR_COUNT) -> list[int]:
    """``count`` view positions spread over the set's viewing directions (farthest-point sampling from view 0)."""
    n = len(cameras)
    if count < 1:
        raise ValueError(f"anchor count {count} must be at least 1")
    d = viewing_directions(cameras)
    chosen = [0]
    # angular distance to the nearest chosen anchor; 1 - cos is monotonic in the angle and exact for ties
    gap = 1.0 - d @ d[0]
    for _ in range(min(count, n) - 1):
        gap[chosen] = -1.0
        nxt = int(torch.argmax(gap))  # argmax returns the first maximum: ties go to the lower index
        chosen.append(nxt)
        gap = torch.minimum(gap, 1.0 - d @ d[nxt])
    return sorted(chosen)


def parse_anchors(text: str, cameras: Cameras, count: int = DEFAULT_ANCHOR_COUNT) -> list[int]:
    """LoadViewSet's ``anchors`` input: 'auto' (``count`` spread views), 'none' ([]), or set indices '0,4,8,12'.

    Raises ValueError naming the bad part and the set's size. Indices are those of the whole set (view_XX).
    """
    n = len(cameras)
    t = str(text or "").strip().lower()
    if t in ("", "none", "off"):
        return []
    if t == "auto":
        return choose_anchors(cameras, count)
    try:
        return parse_selection(t, n)
    except ValueError as e:
        raise ValueError(f"anchors: {e} (the set has {n} views, view_00..view_{n - 1:02d}; or use 'auto' or "
                         "'none')") from None


def anchor_order(cameras: Cameras, anchors: list[int]) -> torch.Tensor:
    """[N, A] int64: for each view of ``cameras``, the set indices of ``anchors`` from nearest to farthest viewing
    direction (ties to the lower index). An anchor's own index is left out and the row padded with -1 at the end.

    ``anchors`` are set indices; ``cameras`` may be the whole set or a selection whose ``view_index`` holds set
    indices, and must contain the anchors' cameras (pass the whole set).
    """
    index = cameras.view_index.tolist() if cameras.view_index is not None else list(range(len(cameras)))
    position = {v: k for k, v in enumerate(index)}
    missing = [a for a in anchors if a not in position]
    if missing:
        raise ValueError(f"anchors {missing} are not among the given cameras")
    d = viewing_directions(cameras)
    a_dirs = d[[position[a] for a in anchors]]
    cos = d @ a_dirs.T  # [N, A]
    order = torch.full((len(index), len(anchors)), -1, dtype=torch.int64)
    anchor_ids = torch.tensor(anchors, dtype=torch.int64)
    for row, view in enumerate(index):
        keys = sorted(range(len(anchors)), key=lambda j: (-float(cos[row, j]), anchors[j]))
        ranked = [int(anchor_ids[j]) for j in keys if anchors[j] != view]
        order[row, :len(ranked)] = torch.tensor(ranked, dtype=torch.int64)
    return order


def anchors_first(selected: list[int], anchors: list[int], size: int) -> list[list[int]]:
    """Chunks of ``selected`` set indices: the selected anchors together first, then the rest in chunks of ``size``.

    The anchors always form one batch whatever ``size`` is, since they attend to each other at every step; the other
    views attend only to the anchors' record, so how they are chunked changes nothing.
    """
    chosen = set(anchors)
    first = [v for v in selected if v in chosen]
    rest = [v for v in selected if v not in chosen]
    size = len(rest) if size < 1 else size
    return ([first] if first else []) + [rest[i:i + size] for i in range(0, len(rest), size)]

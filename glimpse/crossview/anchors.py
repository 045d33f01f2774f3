"""Anchor views: which views of a set are anchors, which anchors each view attends to, and the chunk order.

Anchors are chosen from the cameras alone (never from pixels), so every chunk, prompt and server of a set agrees on
them: farthest-point sampling over the views' viewing directions, starting at view 0, ties to the lower index. For
SyncDreamer's 16-view orbit and 4 anchors that is views 0, 4, 8 and 12 (90 degrees apart). A view attends to the
anchors whose viewing direction is closest to its own (an anchor to the closest *other* anchors).

Plain numpy over the set's world-to-camera matrices [N,3,4] (a numpy array or a CPU tensor), so the headless runner
picks the same anchors as LoadViewSet without importing torch.
"""
from __future__ import annotations

import numpy as np

from ..views import parse_selection

DEFAULT_ANCHOR_COUNT = 4
# LoadViewSet's anchors in an API prompt written before they existed: no anchor chunk, as such a prompt ran.
ANCHORS_WHEN_ABSENT = "none"
DEFAULT_NEIGHBOURS = 2
# Directions are compared after rounding, so that views equally far from two anchors (a camera file's float noise
# apart) break the tie by index, as the docstring promises, on every machine.
TIE_DECIMALS = 9


def viewing_directions(world_to_camera) -> np.ndarray:
    """Unit forward (+z) axes of the cameras in world coordinates [N,3]: row 3 of each world-to-camera rotation."""
    d = np.asarray(world_to_camera, dtype=np.float64)[:, 2, :3]
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def choose_anchors(world_to_camera, count: int = DEFAULT_ANCHOR_COUNT) -> list[int]:
    """``count`` views spread over the set's viewing directions (farthest-point sampling from view 0)."""
    if count < 1:
        raise ValueError(f"anchor count {count} must be at least 1")
    d = viewing_directions(world_to_camera)
    chosen = [0]
    gap = 1.0 - d @ d[0]  # 1 - cos: monotonic in the angle to the nearest chosen anchor
    for _ in range(min(count, len(d)) - 1):
        gap[chosen] = -1.0
        nxt = int(np.argmax(np.round(gap, TIE_DECIMALS)))  # the first maximum: ties go to the lower index
        chosen.append(nxt)
        gap = np.minimum(gap, 1.0 - d @ d[nxt])
    return sorted(chosen)


def parse_anchors(text: str, world_to_camera, count: int = DEFAULT_ANCHOR_COUNT) -> list[int]:
    """LoadViewSet's ``anchors`` input: 'auto' (``count`` spread views), 'none' ([]), or set indices '0,4,8,12'.

    Raises ValueError naming the bad part and the set's size. Indices are those of the whole set (view_XX).
    """
    n = len(world_to_camera)
    t = str(text or "").strip().lower()
    if t in ("", "none", "off"):
        return []
    if t == "auto":
        return choose_anchors(world_to_camera, count)
    try:
        return parse_selection(t, n)
    except ValueError as e:
        raise ValueError(f"anchors: {e} (the set has {n} views, view_00..view_{n - 1:02d}; or use 'auto' or "
                         "'none')") from None


def anchor_order(world_to_camera, anchors: list[int]) -> np.ndarray:
    """int64 [N, A]: for each view of the set, the ``anchors`` from nearest to farthest viewing direction (ties to
    the lower index). An anchor's own index is left out and its row padded with -1 at the end."""
    d = viewing_directions(world_to_camera)
    cos = np.round(d @ d[anchors].T, TIE_DECIMALS)  # [N, A]
    order = np.full((len(d), len(anchors)), -1, dtype=np.int64)
    for view in range(len(d)):
        ranked = [anchors[j] for j in sorted(range(len(anchors)), key=lambda j: (-cos[view, j], anchors[j]))
                  if anchors[j] != view]
        order[view, :len(ranked)] = ranked
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

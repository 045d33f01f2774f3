"""What cross-view attention adds to one view's executed step, at any size, for the cost model (bench/cost.py).

Counted op by op on the meta device like the models (bench/work.py), over SDXL's self-attention layers
(glimpse.presets.SDXL_SELF_ATTENTION: 10 at 1/16 of the image with 640 channels, 60 at 1/32 with 1280):

- the mixing of glimpse.crossview.attention: extended, one fused attention per anchor; correspondence, one gather and
  weighted sum over the anchors for a one-token window, else one local attention over the (2r+1)^2 window per anchor
  and one over the view's own window, and the element-wise mix.

Nothing is projected: the anchors' keys and values are recorded as their own pass computed them
(glimpse.crossview.record), and the view's own self-attention is the UNet's. Also here: the record's bytes that cross
the host link per view and step when it is kept in CPU RAM (what the view reads of its anchors, and its share of the
anchor pass's writes), and the share of tokens with depth that a correspondence record keeps, measured on a set.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from glimpse.crossview.anchors import choose_anchors
from glimpse.crossview.attention import correspondence_one_token, extended, local_attention
from glimpse.crossview.tokens import token_geometry
from glimpse.presets import RECORD_TENSORS, SDXL_SELF_ATTENTION, anchor_record_bytes
from glimpse.types import Cameras, DepthMaps
from glimpse.viewset import load_view_set

from .common import FOX

from .work import Work, WorkCounter

HEAD_DIM = 64  # SDXL's attention heads are 64 wide


def _fused(q, k, v, heads):
    b, t, c = q.shape
    qh, kh, vh = (x.reshape(b, -1, heads, c // heads).transpose(1, 2) for x in (q, k, v))
    out = torch.ops.aten._scaled_dot_product_efficient_attention(qh, kh, vh, None, False)[0]
    return out.transpose(1, 2).reshape(b, t, c)


def step_work(mode: str, neighbours: int, resolution: int, window: int = 1) -> tuple[Work, tuple]:
    """(work, per-op (flop, bytes)) cross-view attention adds to one view's UNet step at ``resolution`` px (fp16)."""
    meta = dict(device="meta", dtype=torch.float16)
    w_count = (2 * window + 1) ** 2
    with WorkCounter(record=True) as counter, torch.no_grad():
        for f, layers, c in SDXL_SELF_ATTENTION:
            t, heads = (resolution // f) ** 2, c // HEAD_DIM
            for _ in range(layers):
                q, own = torch.empty(1, t, c, **meta), torch.empty(1, t, c, **meta)
                refs = [(torch.empty(1, t, c, **meta), torch.empty(1, t, c, **meta)) for _ in range(neighbours)]
                if mode == "extended":
                    extended(own, q, refs, heads, 0.5, _fused)
                    continue
                if window == 0:
                    values = torch.empty(neighbours * t, c, **meta)
                    rows = torch.empty(1, t, neighbours, device="meta", dtype=torch.int64)
                    correspondence_one_token(own, q, values, rows, torch.empty(1, t, neighbours, **meta))
                    continue
                index = torch.empty(1, t, w_count, device="meta", dtype=torch.int64)
                mask = torch.empty(1, t, w_count, device="meta", dtype=torch.bool)
                local_own = local_attention(q, q, q, index, mask, heads)
                delta = torch.zeros_like(own)
                for kj, vj in refs:
                    local = local_attention(q, kj, vj, index, mask, heads)
                    delta.addcmul_(mask[..., :1].to(own.dtype), local - local_own)
                own.addcmul(delta, torch.empty(1, t, 1, **meta))
    return counter.total(), tuple(counter.ops["other"])


def record_bytes_per_view_step(mode: str, window: int, neighbours: int, anchors: int, views: int, resolution: int,
                               coverage: float = 1.0) -> int:
    """Bytes of the record over the host link per view and step when it lives in CPU RAM: what the view reads of its
    anchors in, and its share of the anchor pass's record out (the anchors' once per set of ``views``). A
    correspondence record keeps the share ``coverage`` of the tokens (those with depth), and keys only for windows
    wider than one token."""
    if mode == "correspondence":
        per_anchor = anchor_record_bytes(resolution, resolution, 1, 1, tensors=2 if window else 1, coverage=coverage)
    else:
        per_anchor = anchor_record_bytes(resolution, resolution, 1, 1, tensors=RECORD_TENSORS[mode])
    return per_anchor * neighbours + per_anchor * anchors // views


def surface_coverage(depth: DepthMaps, cameras: Cameras, views: list[int]) -> float:
    """The share of a full record that a correspondence record keeps for ``views`` (the anchors) of a set: their
    tokens with depth at SDXL's attention grids, weighted by each grid's layers x tokens x channels."""
    size = depth.depth.shape[-2:]
    kept = total = 0.0
    for f, layers, c in SDXL_SELF_ATTENTION:
        grid = (size[0] // f, size[1] // f)
        valid = token_geometry(depth, cameras, grid).valid[views]
        kept += float(valid.float().mean()) * layers * grid[0] * grid[1] * c
        total += layers * grid[0] * grid[1] * c
    return kept / total


@lru_cache(maxsize=None)
def sample_coverage(resolution: int, anchor_count: int) -> float:
    """:func:`surface_coverage` of the benchmark's set (samples/fox) at ``resolution`` px, for its anchors."""
    vs = load_view_set(FOX, resolution=resolution)
    return surface_coverage(vs.depth, vs.cameras, choose_anchors(vs.cameras.world_to_camera, anchor_count))

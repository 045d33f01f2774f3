"""What cross-view attention adds to one view's executed step, at any size, for the cost model (bench/cost.py).

Counted op by op on the meta device like the models (bench/work.py), over SDXL's self-attention layers
(glimpse.presets.SDXL_SELF_ATTENTION: 10 at 1/16 of the image with 640 channels, 60 at 1/32 with 1280):

- the keys and values of the anchors' tokens, one projection pair per anchor the view attends to and per layer (the
  block projects its own tokens anyway);
- the mixing of glimpse.crossview.attention: extended, one fused attention per anchor; correspondence, one local
  attention over the (2r+1)^2 window per anchor and one over the view's own window, and the element-wise mix.

The view's own self-attention is the UNet's and is not counted here. Also returned: the record's bytes that cross the
host link per view and step when it is kept in CPU RAM (the anchors' hidden states the view attends to).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from glimpse.crossview.attention import extended, local_attention
from glimpse.presets import SDXL_SELF_ATTENTION, anchor_record_bytes

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
            weight = torch.empty(c, c, **meta)
            for _ in range(layers):
                q, own = torch.empty(1, t, c, **meta), torch.empty(1, t, c, **meta)
                hidden = torch.empty(1, neighbours * t, c, **meta)
                k, v = F.linear(hidden, weight), F.linear(hidden, weight)
                refs = [(k[:, j * t:(j + 1) * t], v[:, j * t:(j + 1) * t]) for j in range(neighbours)]
                if mode == "extended":
                    extended(own, q, refs, heads, 0.5, _fused)
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


def record_bytes_per_view_step(neighbours: int, anchors: int, views: int, resolution: int) -> int:
    """Bytes of the record over the host link per view and step when it lives in CPU RAM: the view's anchors' hidden
    states in, and its share of the anchor pass's record out (the anchors' once per set of ``views``)."""
    per_anchor = anchor_record_bytes(resolution, resolution, 1, 1)
    return per_anchor * neighbours + per_anchor * anchors // views

"""The two ways a view's self-attention takes in its anchors, as pure functions of projected q, k, v.

Tensors are [B, T, heads * dim] as ComfyUI's attention functions take them; ``attention(q, k, v, heads)`` is the
backend to use for full attention (ComfyUI's memory-efficient ``optimized_attention`` in the node layer).

- **extended**: ``(1 - w) * attn(q, own) + w * mean_j attn(q, anchor_j)``: each view keeps its own attention and
  mixes in the mean of its attention over each anchor's tokens (GaussCtrl's rule, with w its 0.4).
- **correspondence**: ``attn(q, own) + w * mean_j (local(q, anchor_j near p_j) - local(q, own near t))`` over the
  anchors j where token t has a depth-checked correspondence p_j: the token's attention over its own 3x3 token
  neighbourhood is exchanged, with weight w, for its attention over anchor j's neighbourhood at the same 3D point,
  while the global attention stays its own. Tokens without a correspondence keep their own attention exactly.

Both are exactly the view's own attention when w = 0, and when the anchors are the view itself (identical tokens,
identical cameras): the mechanism adds no bias of its own.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
LOCAL_CHUNK = 1024  # query tokens per local-attention slice: bounds the gathered [T, window, dim] keys and values


def extended(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, refs: Sequence[tuple[torch.Tensor, torch.Tensor]],
             heads: int, weight: float, attention: Attention) -> torch.Tensor:
    """``(1 - weight) * attention(q, k, v) + weight * mean over refs of attention(q, k_j, v_j)``."""
    own = attention(q, k, v, heads)
    if weight == 0 or not refs:
        return own
    mixed = sum(attention(q, kj, vj, heads) for kj, vj in refs) / len(refs)
    return torch.lerp(own, mixed.to(own.dtype), weight)


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: torch.Tensor, mask: torch.Tensor,
                    heads: int) -> torch.Tensor:
    """Attention of each query token over its own small set of key tokens.

    q [B,T,D]; k, v [B,S,D]; ``index`` int64 [B,T,W] rows of k/v for each query, ``mask`` bool [B,T,W]. Scores and
    softmax in float32. Queries whose mask is all False get zeros.
    """
    b, t, d = q.shape
    dh = d // heads
    out = torch.zeros_like(q)
    rows = torch.arange(b, device=q.device)[:, None, None]
    for s in range(0, t, LOCAL_CHUNK):
        e = min(t, s + LOCAL_CHUNK)
        idx, m = index[:, s:e], mask[:, s:e]
        qh = q[:, s:e].reshape(b, e - s, heads, dh).float()
        kh = k[rows, idx].reshape(b, e - s, -1, heads, dh).float()
        vh = v[rows, idx].reshape(b, e - s, -1, heads, dh).float()
        scores = torch.einsum("bthd,btwhd->bthw", qh, kh) * dh ** -0.5
        scores = scores.masked_fill(~m[:, :, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: softmax of -inf is NaN
        out[:, s:e] = torch.einsum("bthw,btwhd->bthd", p, vh).reshape(b, e - s, d).to(q.dtype)
    return out


def correspondence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   refs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                   own_window: tuple[torch.Tensor, torch.Tensor], heads: int, weight: float,
                   attention: Attention) -> torch.Tensor:
    """``attention(q, k, v) + weight * mean_j [local(q, ref_j window) - local(q, own window)]`` over valid refs.

    ``refs``: (k_j, v_j, index_j [B,T,W], mask_j [B,T,W]) per anchor, the window around each token's correspondence in
    anchor j (all False where there is none). ``own_window``: (index, mask) of the same offsets around each token in
    the view itself.
    """
    own = attention(q, k, v, heads)
    if weight == 0 or not refs:
        return own
    valid = [m.any(-1) for _, _, _, m in refs]  # [B,T] per anchor
    count = torch.stack(valid).sum(0)
    if not bool(count.any()):
        return own
    local_own = local_attention(q, k, v, *own_window, heads)
    delta = torch.zeros_like(own, dtype=torch.float32)
    for (kj, vj, index, mask), has in zip(refs, valid):
        if bool(has.any()):
            delta += has[..., None] * (local_attention(q, kj, vj, index, mask, heads).float() - local_own.float())
    return own + (weight * delta / count.clamp_min(1)[..., None]).to(own.dtype)

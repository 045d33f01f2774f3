"""The two ways a view's self-attention takes in its anchors, as pure functions of projected q, k, v.

Tensors are [B, T, heads * dim] as ComfyUI's attention functions take them; ``own`` is the view's own self-attention
output, computed by the caller as the UNet would; ``attention(q, k, v, heads)`` is the backend for full attention
over an anchor (ComfyUI's memory-efficient ``optimized_attention`` in the node layer).

- **extended**: ``(1 - w) * attn(q, own) + w * mean_j attn(q, anchor_j)``: each view keeps its own attention and
  mixes in the mean of its attention over each anchor's tokens (GaussCtrl's rule, with w its 0.4).
- **correspondence**: ``attn(q, own) + w * mean_j (local(q, anchor_j near p_j) - local(q, own near t))`` over the
  anchors j where token t has a depth-checked correspondence p_j: the token's attention over its own small token
  neighbourhood (the token itself, or the 3x3 around it) is exchanged, with weight w, for its attention over anchor
  j's neighbourhood at the same 3D point,
  while the global attention stays its own. Tokens without a correspondence keep their own attention exactly.
  With a one-token window a token's attention over one token is that token's value, so the rule is
  ``attn(q, own) + sum_j c_j (v_j[p_j] - v_t)`` with per-token coefficients ``c_j = w [p_j exists] / count``
  (:func:`one_token_coefficients`, fixed for a chunk) and one gather: :func:`correspondence_one_token`.

Both are exactly the view's own attention when w = 0, and when the anchors are the view itself (identical tokens,
identical cameras): the mechanism adds no bias of its own.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def extended(own: torch.Tensor, q: torch.Tensor, refs: Sequence[tuple[torch.Tensor, torch.Tensor]], heads: int,
             weight: float, attention: Attention) -> torch.Tensor:
    """``(1 - weight) * own + weight * mean over refs of attention(q, k_j, v_j)``; ``own`` is the view's own
    self-attention output (what the UNet computes anyway)."""
    if weight == 0 or not refs:
        return own
    mixed = sum(attention(q, kj, vj, heads) for kj, vj in refs) / len(refs)
    return torch.lerp(own, mixed.to(own.dtype), weight)


def local_attention(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor, index: torch.Tensor,
                    mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention of each query token over its own small set of key tokens.

    q [B,T,D]; k, v [B,S,D] (k may be None for a one-slot window, which needs no scores); ``index`` int64 [B,T,W]
    rows of k/v for each query, ``mask`` bool [B,T,W]. One pass per
    window slot (W is 1 to 25), so nothing of size [T, W, D] is ever built: per slot, the gathered keys' dot products
    (float32 scores), then the gathered values accumulated with their weights. A single slot needs no scores: its
    value is the output. Queries whose mask is all False get zeros.
    """
    b, t, d = q.shape
    dh = d // heads
    rows = torch.arange(b, device=q.device)[:, None]
    if index.shape[-1] == 1:
        return v[rows, index[..., 0]] * mask.to(v.dtype)
    qh = q.reshape(b, t, heads, dh)
    scores = torch.stack([torch.linalg.vecdot(qh, k[rows, index[..., j]].reshape(b, t, heads, dh)).float()
                          for j in range(index.shape[-1])], dim=-1) * dh ** -0.5
    p = torch.softmax(scores.masked_fill_(~mask[:, :, None, :], float("-inf")), dim=-1).nan_to_num_(0.0).to(v.dtype)
    out = torch.zeros(b, t, heads, dh, dtype=v.dtype, device=v.device)
    for j in range(index.shape[-1]):
        out.addcmul_(p[..., j:j + 1], v[rows, index[..., j]].reshape(b, t, heads, dh))
    return out.reshape(b, t, d)


def correspondence(own: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   refs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                   own_window: tuple[torch.Tensor, torch.Tensor], heads: int, weight: float) -> torch.Tensor:
    """``own + weight * mean_j [local(q, ref_j window) - local(q, own window)]`` over the anchors with a correspondence.

    ``own`` is the view's own self-attention output; ``k``, ``v`` its own keys and values. ``refs``: (k_j, v_j,
    index_j [B,T,W], mask_j [B,T,W]) per anchor, the window around each token's correspondence in anchor j (all False
    where there is none) as rows of k_j/v_j [B,S,D] (k_j may be None for a one-token window). ``own_window``:
    (index, mask) of the same offsets around each token in the view itself.
    """
    if weight == 0 or not refs:
        return own
    valid = [m.any(-1) for _, _, _, m in refs]  # [B,T] per anchor
    count = torch.stack(valid).sum(0)
    if not bool(count.any()):
        return own
    local_own = local_attention(q, k, v, *own_window, heads)
    delta = torch.zeros_like(own)
    for (kj, vj, index, mask), has in zip(refs, valid):
        if bool(has.any()):
            delta.addcmul_(has[..., None].to(own.dtype), local_attention(q, kj, vj, index, mask, heads) - local_own)
    return own.addcmul(delta, (weight / count.clamp_min(1))[..., None].to(own.dtype))


def one_token_coefficients(masks: torch.Tensor, weight: float) -> torch.Tensor:
    """``c_j = weight * [token has a correspondence in anchor j] / (number of anchors where it has one)`` [B,T,m]
    from the one-token windows' masks [B,T,m] (0 where there is none)."""
    has = masks.to(torch.float32)
    return has * (weight / has.sum(-1, keepdim=True).clamp_min(1.0))


def correspondence_one_token(own: torch.Tensor, v: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                             coefficients: torch.Tensor) -> torch.Tensor:
    """:func:`correspondence` for one-token windows in four kernels: ``own + sum_j c_j (values[rows_j] - v)``.

    own, v [B,T,D]; ``values`` [R,D] the anchors' value rows; ``rows`` int64 [B,T,m] each token's row per anchor
    (any row where it has none); ``coefficients`` [B,T,m] from :func:`one_token_coefficients`, in own's dtype. A
    token with a correspondence has depth, so its own one-token window is itself. Anchors without a kept row (no
    token with depth at this grid) leave nothing to correspond to."""
    if values.shape[0] == 0:
        return own
    gathered = values[rows]  # [B,T,m,D]
    mixed = torch.matmul(coefficients.unsqueeze(2), gathered).squeeze(2)
    return mixed.addcmul_(coefficients.sum(-1, keepdim=True), v, value=-1.0).add_(own)

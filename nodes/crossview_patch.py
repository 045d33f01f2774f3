"""The MODEL patch behind CrossViewAttention: ComfyUI's self-attention hooks around ``glimpse.crossview``.

Two hooks on a clone of the ModelPatcher (the UNet itself is never copied or edited):

- ``attn1_patch`` (every self-attention, before its q/k/v projections) appends the anchors' hidden states to the
  keys/values source: in the anchor pass the other anchors of the same batch (and records the batch), in a view pass
  the anchors' record of the same step and layer.
- ``attn1_replace`` (registered on every self-attention layer of the UNet) gets the projected q, k, v, splits k/v into
  the view's own tokens and each anchor's, and mixes them by the chosen rule with ComfyUI's ``optimized_attention``.

Rows of a model call are ``len(cond_or_uncond)`` copies of the chunk's views (cond, uncond); at cfg 1 only cond runs.
ControlNets run without these hooks (ComfyUI calls them without transformer options).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention

from ..glimpse.crossview import attention as mixing
from ..glimpse.crossview.record import AnchorRecord
from ..glimpse.crossview.tokens import TokenGeometry, correspondences, token_geometry, windows
from ..glimpse.types import Cameras, DepthMaps


def self_attention_layers(model) -> list[tuple[str, int, int]]:
    """Every self-attention of the UNet as ComfyUI's attn1 replace key (block name, block number, transformer index)."""
    unet = model.model.diffusion_model
    keys = []
    for name, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]),
                         ("output", unet.output_blocks)):
        for number, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(name, number, t) for t in range(len(layer.transformer_blocks))]
    return keys


@dataclass
class ChunkPlan:
    """What one chunk's model clone does.

    ``refs`` [B, m]: per row the anchors it attends to, as positions in the batch (anchor pass) or in the record's
    anchors (view pass). ``extended_rows`` [B]: rows that use the extended rule in correspondence mode (no depth).
    """

    role: str  # "anchor" (records, attends to the other anchors in its batch) or "view" (attends to the record)
    views: list[int]
    refs: torch.Tensor
    mode: str
    weight: float
    radius: int
    record: AnchorRecord
    depth: DepthMaps | None
    cameras: Cameras
    extended_rows: torch.Tensor
    _windows: dict = field(default_factory=dict)


class CrossViewPatch:
    def __init__(self, plan: ChunkPlan):
        self.plan = plan

    # -- attn1_patch: the keys/values source -----------------------------------------------------------------
    def __call__(self, n: torch.Tensor, context: torch.Tensor, value: torch.Tensor, extra_options: dict):
        p = self.plan
        m = p.refs.shape[1]
        layer = (*extra_options["block"], extra_options["block_index"])
        sigma = float(extra_options["sigmas"].reshape(-1)[0])
        groups = extra_options.get("cond_or_uncond") or [0]
        b = len(p.views)
        if n.shape[0] != b * len(groups):
            raise RuntimeError(f"CrossViewAttention: a model call with {n.shape[0]} rows for a chunk of {b} views "
                               f"and {len(groups)} condition group(s); the batch was split or reordered")
        parts = []
        for g, group in enumerate(groups):
            rows = n[g * b:(g + 1) * b]
            if p.role == "anchor":
                p.record.put(sigma, layer, group, rows)
                source = rows
            else:
                source = p.record.get(sigma, layer, group).to(device=n.device, dtype=n.dtype)
            if m:
                parts.append(source[p.refs.to(source.device)])  # [b, m, T, C]
        if not m:
            return n, context, value
        refs = torch.cat(parts)
        extended = torch.cat([n, refs.reshape(n.shape[0], m * n.shape[1], n.shape[2])], dim=1)
        return n, extended, extended

    # -- attn1_replace: the mixing ---------------------------------------------------------------------------
    def replace(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        p = self.plan
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")

        def attention(q_, k_, v_, h):
            return optimized_attention(q_, k_, v_, h, attn_precision=precision)

        t = q.shape[1]
        m = k.shape[1] // t - 1
        own_k, own_v = k[:, :t], v[:, :t]
        own = attention(q, own_k, own_v, heads)
        if m == 0:  # a set's only anchor has no other anchor to attend to
            return own
        refs = [(k[:, t * (j + 1):t * (j + 2)], v[:, t * (j + 1):t * (j + 2)]) for j in range(m)]
        rows_extended = p.extended_rows.repeat(q.shape[0] // len(p.views)).to(q.device)
        if p.mode == "extended" or bool(rows_extended.all()):
            return mixing.extended(own, q, refs, heads, p.weight, attention)
        grid = tuple(extra_options["activations_shape"][-2:])
        ref_index, ref_mask, own_index, own_mask = self._windows_at(grid, q.shape[0], q.device)
        out = mixing.correspondence(
            own, q, own_k, own_v, [(kj, vj, ref_index[:, j], ref_mask[:, j]) for j, (kj, vj) in enumerate(refs)],
            (own_index, own_mask), heads, p.weight)
        if bool(rows_extended.any()):
            out = torch.where(rows_extended[:, None, None], mixing.extended(own, q, refs, heads, p.weight, attention),
                              out)
        return out

    def _windows_at(self, grid: tuple[int, int], rows: int, device: torch.device):
        """Per row, the windows around each token's correspondence in each anchor, and around itself (cached)."""
        p = self.plan
        key = (grid, rows, str(device))
        if key not in p._windows:
            own_geo = self._geometry(p.depth, p.cameras, grid)
            anchor_geo = own_geo if p.role == "anchor" else self._geometry(p.record.depth, p.record.cameras, grid)
            ref_index, ref_mask, own_index, own_mask = [], [], [], []
            t = grid[0] * grid[1]
            none = torch.full((t,), -1, dtype=torch.int64)
            for row in range(len(p.views)):
                per_ref = [windows(none if own_geo is None or anchor_geo is None
                                   else correspondences(own_geo, row, anchor_geo, int(a)), grid, p.radius,
                                   None if anchor_geo is None else anchor_geo.valid[int(a)])
                           for a in p.refs[row]]
                ref_index.append(torch.stack([w[0] for w in per_ref]))
                ref_mask.append(torch.stack([w[1] for w in per_ref]))
                idx, msk = windows(torch.arange(t), grid, p.radius,
                                   own_geo.valid[row] if own_geo is not None else None)
                own_index.append(idx)
                own_mask.append(msk)
            groups = rows // len(p.views)
            p._windows[key] = tuple(torch.stack(x).repeat(groups, *([1] * (x[0].dim()))).to(device)
                                    for x in (ref_index, ref_mask, own_index, own_mask))
        return p._windows[key]

    @staticmethod
    def _geometry(depth: DepthMaps | None, cameras: Cameras, grid: tuple[int, int]) -> TokenGeometry | None:
        return None if depth is None else token_geometry(depth, cameras, grid)


def patched_model(model, plan: ChunkPlan):
    """A clone of ``model`` with the cross-view hooks on every self-attention layer."""
    patch = CrossViewPatch(plan)
    clone = model.clone()
    clone.set_model_attn1_patch(patch)
    for name, number, index in self_attention_layers(model):
        clone.set_model_attn1_replace(patch.replace, name, number, index)
    return clone

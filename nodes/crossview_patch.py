"""The MODEL patch behind CrossViewAttention: ComfyUI's self-attention hook around ``glimpse.crossview``.

One hook on a clone of the ModelPatcher (the UNet itself is never copied or edited): ``attn1_replace``, registered on
every self-attention layer, gets the layer's projected q, k, v. In the anchor pass it records the anchors' keys and
values (``glimpse.crossview.record``) and mixes each anchor with the other anchors of its batch; in a view pass it
mixes the view with its anchors' recorded keys and values of the same step and layer. Nothing is projected twice:
the anchors' keys and values are the ones their own pass computed. Mixing follows the chosen rule with ComfyUI's
``optimized_attention``.

Rows of a model call are ``len(cond_or_uncond)`` copies of the chunk's views (cond, uncond); at cfg 1 only cond runs.
ControlNets run without these hooks (ComfyUI calls them without transformer options).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

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
    _cache: dict = field(default_factory=dict)  # per-plan values made once (CrossViewPatch._cached)

    @cached_property
    def needed(self) -> list[int]:
        """View pass: the record positions of every anchor some view of the chunk attends to, in record order."""
        return sorted({int(a) for a in self.refs.flatten()})

    @cached_property
    def slots(self) -> torch.Tensor:
        """View pass [B, m]: each view's anchors as positions in :attr:`needed`."""
        position = {a: i for i, a in enumerate(self.needed)}
        return self.refs.clone().apply_(position.__getitem__)

    @cached_property
    def all_extended(self) -> bool:
        """Every view uses the extended rule (decided on the host: no device sync per layer)."""
        return bool(self.extended_rows.all())

    @cached_property
    def any_extended(self) -> bool:
        return bool(self.extended_rows.any())


@dataclass(frozen=True)
class Site:
    """Where a self-attention call is: its layer key, step sigma, token grid and head count."""

    layer: tuple
    sigma: float
    grid: tuple[int, int]
    heads: int


class CrossViewPatch:
    def __init__(self, plan: ChunkPlan):
        self.plan = plan

    def replace(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """attn1_replace: the view's own attention, then each condition group mixed with its anchors."""
        p = self.plan
        heads = extra_options["n_heads"]
        precision = extra_options.get("attn_precision")

        def attention(q_, k_, v_, h):
            return optimized_attention(q_, k_, v_, h, attn_precision=precision)

        groups = extra_options.get("cond_or_uncond") or [0]
        b = len(p.views)
        if q.shape[0] != b * len(groups):
            raise RuntimeError(f"CrossViewAttention: a model call with {q.shape[0]} rows for a chunk of {b} views "
                               f"and {len(groups)} condition group(s); the batch was split or reordered")
        at = Site(layer=(*extra_options["block"], extra_options["block_index"]),
                  sigma=float(extra_options["sigmas"].reshape(-1)[0]),
                  grid=tuple(extra_options["activations_shape"][-2:]), heads=heads)
        own = attention(q, k, v, heads)
        out = []
        for g, group in enumerate(groups):
            rows = slice(g * b, (g + 1) * b)
            if p.role == "anchor":
                p.record.put(at.sigma, at.layer, group, k[rows], v[rows], at.grid)
            out.append(self._mix(own[rows], q[rows], k[rows], v[rows], group, at, attention))
        return out[0] if len(out) == 1 else torch.cat(out)

    def _mix(self, own, q, k, v, group: int, at: Site, attention) -> torch.Tensor:
        """One condition group's rows: own attention mixed with the anchors' keys and values by the plan's rule."""
        p = self.plan
        m = p.refs.shape[1]
        if m == 0:  # a set's only anchor has no other anchor to attend to
            return own
        t = q.shape[1]
        if p.role == "anchor":  # the other anchors are rows of this batch
            keys, values = k.reshape(-1, k.shape[-1]), v.reshape(-1, v.shape[-1])
            n_blocks = len(p.views)
        else:  # the anchors' kept rows from the record, in the order of plan.needed
            keys, values = p.record.get(at.sigma, at.layer, group, p.needed, at.grid, q.device, q.dtype)
            n_blocks = len(p.needed)
        blocks = None
        if p.role == "anchor" or p.record.layout == "full":  # [n_blocks * T, C] rows: whole anchors
            source = p.refs if p.role == "anchor" else p.slots
            slots = self._cached(("slots", str(q.device)), lambda: source.to(q.device))
            kb, vb = keys.view(n_blocks, t, -1), values.view(n_blocks, t, -1)
            blocks = [(kb[slots[:, j]], vb[slots[:, j]]) for j in range(m)]
            if p.mode == "extended" or p.all_extended:
                return mixing.extended(own, q, blocks, at.heads, p.weight, attention)
        if p.radius == 0:
            rows, coefficients = self._one_token_at(at.grid, q.device, q.dtype)
            out = mixing.correspondence_one_token(own, v, values, rows, coefficients)
        else:
            ref_rows, ref_mask, own_index, own_mask = self._windows_at(at.grid, q.device)
            b = q.shape[0]
            kr, vr = keys[None].expand(b, *keys.shape), values[None].expand(b, *values.shape)
            refs = [(kr, vr, ref_rows[:, j], ref_mask[:, j]) for j in range(m)]
            out = mixing.correspondence(own, q, k, v, refs, (own_index, own_mask), at.heads, p.weight)
        if p.any_extended:
            rows_extended = self._cached(("extended rows", str(q.device)), lambda: p.extended_rows.to(q.device))
            out = torch.where(rows_extended[:, None, None],
                              mixing.extended(own, q, blocks, at.heads, p.weight, attention), out)
        return out

    def _cached(self, key, make):
        """A per-plan value made once (device copies: a host-to-device copy per layer would sync the device)."""
        if key not in self.plan._cache:
            self.plan._cache[key] = make()
        return self.plan._cache[key]

    def _one_token_at(self, grid: tuple[int, int], device: torch.device, dtype: torch.dtype):
        """One-token windows as (row of each token's correspondence per anchor [B,T,m], coefficients [B,T,m])."""
        def make():
            ref_rows, ref_mask, _, _ = self._windows_at(grid, device)
            return (ref_rows[..., 0].transpose(1, 2).contiguous(),
                    mixing.one_token_coefficients(ref_mask[..., 0].transpose(1, 2), self.plan.weight).to(dtype))

        return self._cached(("one token", grid, str(device), dtype), make)

    def _windows_at(self, grid: tuple[int, int], device: torch.device):
        """Per view, the windows around each token's correspondence in each anchor, as rows of the anchors' keys and
        values (the batch's [B*T] rows in the anchor pass, the record's :meth:`get` rows in a view pass), and around
        itself (token indices); cached per grid and device."""
        p = self.plan

        def make():
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
            ref_index, ref_mask = torch.stack(ref_index), torch.stack(ref_mask)  # [B, m, T, W]
            if p.role == "anchor":  # token of another anchor of the batch -> row of the batch's [B * T] rows
                lookup = (p.refs[..., None] * t + torch.arange(t))  # [B, m, T]
            else:  # token of an anchor -> row of the record's rows for plan.needed
                lookup = p.record.lookup(grid, p.needed)[p.slots]
            rows = torch.gather(lookup, 2, ref_index.flatten(2)).view(ref_index.shape)
            if bool((rows[ref_mask] < 0).any()):
                raise RuntimeError("CrossViewAttention: a correspondence lands on an anchor token the record did "
                                   "not keep")
            ref_index = torch.where(ref_mask, rows, 0)
            return tuple(x.to(device) for x in (ref_index, ref_mask, torch.stack(own_index), torch.stack(own_mask)))

        return self._cached(("windows", grid, str(device)), make)

    @staticmethod
    def _geometry(depth: DepthMaps | None, cameras: Cameras, grid: tuple[int, int]) -> TokenGeometry | None:
        return None if depth is None else token_geometry(depth, cameras, grid)


def patched_model(model, plan: ChunkPlan):
    """A clone of ``model`` with the cross-view hook on every self-attention layer."""
    patch = CrossViewPatch(plan)
    clone = model.clone()
    for name, number, index in self_attention_layers(model):
        clone.set_model_attn1_replace(patch.replace, name, number, index)
    return clone

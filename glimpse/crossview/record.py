"""The anchors' recorded keys and values, and the store that keeps them between chunks and prompts.

While the anchors are sampled, every self-attention layer's projected keys and values of the anchors are kept per
executed step (a view attends to them with its own queries, so nothing is projected again for every view). A view
sampled later reads its anchors' entries of the same step and layer. Two layouts:

- ``full``: keys and values of every token ([A*T, C] rows, anchor by anchor), what extended mode attends to;
- ``surface`` (correspondence mode, every anchor with depth): only the tokens that have depth, the only ones a
  correspondence can land on, and only the values when the window is one token (a one-token window's attention is
  that token's value). The fox sample at SyncDreamer's cameras has depth in 8 % of its tokens, so its record is
  25x smaller than the full one, and so is what a view copies from a record kept in CPU RAM.

A record is valid for one view set and one sampling graph (model, prompt, seed, strength, ControlNet: everything the
sampler depends on, ``graph_key``); views of another graph never read it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..types import Cameras, DepthMaps
from .tokens import token_geometry

Layer = tuple  # (block name, block number, transformer index): ComfyUI's attn1 patch key
LAYOUTS = ("full", "surface")


def sigma_key(sigma: float) -> float:
    """Steps are matched by their sigma (the same on every chunk of a set), rounded past float noise."""
    return float(f"{float(sigma):.5g}")


@dataclass
class AnchorRecord:
    """Keys and values of one set's anchors, in anchor order (``anchors`` are set indices)."""

    set_key: str
    graph_key: str
    graph: dict
    anchors: list[int]
    depth: DepthMaps | None
    cameras: Cameras
    device: torch.device
    layout: str = "full"
    keep_keys: bool = True
    features: dict = field(default_factory=dict)  # (sigma key, layer, cond_or_uncond) -> (keys [R, C] or None, values)
    sigmas: list = field(default_factory=list)
    _rows: dict = field(default_factory=dict)  # grid -> (first row [A], rows [A], row of each token [A, T] or -1)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown record layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.layout == "surface" and self.depth is None:
            raise ValueError("a surface record needs the anchors' depth")
        if self.layout == "full" and not self.keep_keys:
            raise ValueError("a full record keeps the keys (extended attention needs them)")

    def rows(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where each anchor's tokens are kept at token grid ``grid``: (first row [A], row count [A], the row of each
        token within its anchor's rows [A, T], -1 where the token is not kept)."""
        if grid not in self._rows:
            a, t = len(self.anchors), grid[0] * grid[1]
            if self.layout == "full":
                kept = torch.ones(a, t, dtype=torch.bool)
            else:
                kept = token_geometry(self.depth, self.cameras, grid).valid.reshape(a, t)
            count = kept.sum(1)
            first = torch.cumsum(count, 0) - count
            row = torch.where(kept, torch.cumsum(kept, 1) - 1, -1)
            self._rows[grid] = (first, count, row)
        return self._rows[grid]

    def put(self, sigma: float, layer: Layer, cond_or_uncond: int, keys: torch.Tensor, values: torch.Tensor,
            grid: tuple[int, int]) -> None:
        """Keep the anchors' keys and values [A, T, C] of one layer at one step."""
        s = sigma_key(sigma)
        if s not in self.sigmas:
            self.sigmas.append(s)
        token_kept = None if self.layout == "full" else self.rows(grid)[2].to(values.device) >= 0

        def kept(x: torch.Tensor) -> torch.Tensor:
            x = x.detach()
            return (x.reshape(-1, x.shape[-1]) if token_kept is None else x[token_kept]).to(self.device)

        self.features[(s, layer, cond_or_uncond)] = (kept(keys) if self.keep_keys else None, kept(values))

    def lookup(self, grid: tuple[int, int], anchors: list[int]) -> torch.Tensor:
        """int64 [len(anchors), T]: where each token of the anchors at positions ``anchors`` (record order) is in
        :meth:`get`'s rows for them, -1 where it is not kept."""
        _, count, row = self.rows(grid)
        offset = torch.cumsum(count[anchors], 0) - count[anchors]
        return torch.where(row[anchors] >= 0, row[anchors] + offset[:, None], -1)

    def get(self, sigma: float, layer: Layer, cond_or_uncond: int, anchors: list[int], grid: tuple[int, int],
            device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The kept keys (None when only values are kept) and values of the anchors at positions ``anchors`` (record
        order), one anchor after the other ([R, C] each, rows as :meth:`lookup` says), on ``device``. Only these rows
        are copied when the record lives elsewhere."""
        s = sigma_key(sigma)
        found = self.features.get((s, layer, cond_or_uncond))
        if found is None:
            if s not in self.sigmas:
                raise KeyError(f"the anchors {self.anchor_names} were recorded at sigmas {self.sigmas}, not at "
                               f"{s}: the steps or the strength changed since, so queue the anchors again")
            raise KeyError(f"the anchor record of {self.anchor_names} has no entry for layer {layer} at sigma {s} "
                           "(the anchor pass was interrupted, or the model changed): queue the anchors again")
        first, count, _ = self.rows(grid)
        spans = [(int(first[a]), int(count[a])) for a in anchors]
        contiguous = all(f + c == spans[i + 1][0] for i, (f, c) in enumerate(spans[:-1]))

        def fetch(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            part = (x[spans[0][0]:spans[-1][0] + spans[-1][1]] if contiguous
                    else torch.cat([x[f:f + c] for f, c in spans]))
            return part.to(device=device, dtype=dtype)

        return fetch(found[0]), fetch(found[1])

    @property
    def anchor_names(self) -> str:
        return ", ".join(f"view_{a:02d}" for a in self.anchors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self.features.values() for t in pair if t is not None)

    def summary(self) -> str:
        layers = len({k[1] for k in self.features})
        kept = "keys and values" if self.keep_keys else "values"
        tokens = "every token" if self.layout == "full" else "tokens with depth"
        return (f"anchors {self.anchor_names}: {len(self.sigmas)} step(s) x {layers} layer(s), {kept} of {tokens}, "
                f"{self.nbytes / 2 ** 20:.1f} MiB on {self.device}")


class RecordStore:
    """The records of the last ``capacity`` view sets (a set's new record replaces its old ones)."""

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._records: OrderedDict[tuple[str, str], AnchorRecord] = OrderedDict()

    def add(self, record: AnchorRecord) -> AnchorRecord:
        for key in [k for k in self._records if k[0] == record.set_key]:
            del self._records[key]
        self._records[(record.set_key, record.graph_key)] = record
        while len({k[0] for k in self._records}) > self.capacity:
            self._records.popitem(last=False)
        return record

    def find(self, set_key: str, graph_key: str) -> AnchorRecord | None:
        record = self._records.get((set_key, graph_key))
        if record is not None:
            self._records.move_to_end((set_key, graph_key))
        return record

    def of_set(self, set_key: str) -> list[AnchorRecord]:
        return [r for k, r in self._records.items() if k[0] == set_key]

    def records(self) -> list[AnchorRecord]:
        return list(self._records.values())

    def clear(self) -> None:
        self._records.clear()

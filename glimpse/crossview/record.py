"""The anchors' recorded self-attention inputs, and the store that keeps them between chunks and prompts.

While the anchors are sampled, every self-attention layer's input (the normalised hidden states, [A, T, C] for the A
anchors) is kept per executed step. A view sampled later attends to its anchors' entries of the same step and layer.
A record is valid for one view set and one sampling graph (model, prompt, seed, strength, ControlNet: everything the
sampler depends on, ``graph_key``); views of another graph never read it.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from ..types import Cameras, DepthMaps

Layer = tuple  # (block name, block number, transformer index): ComfyUI's attn1 patch key


def sigma_key(sigma: float) -> float:
    """Steps are matched by their sigma (the same on every chunk of a set), rounded past float noise."""
    return float(f"{float(sigma):.5g}")


@dataclass
class AnchorRecord:
    """Features of one set's anchors, in anchor order (``anchors`` are set indices)."""

    set_key: str
    graph_key: str
    graph: dict
    anchors: list[int]
    depth: DepthMaps
    cameras: Cameras
    device: torch.device
    features: dict = field(default_factory=dict)  # (sigma key, layer, cond_or_uncond) -> [A, T, C]
    sigmas: list = field(default_factory=list)

    def put(self, sigma: float, layer: Layer, cond_or_uncond: int, hidden: torch.Tensor) -> None:
        s = sigma_key(sigma)
        if s not in self.sigmas:
            self.sigmas.append(s)
        self.features[(s, layer, cond_or_uncond)] = hidden.detach().to(self.device)

    def get(self, sigma: float, layer: Layer, cond_or_uncond: int) -> torch.Tensor:
        s = sigma_key(sigma)
        found = self.features.get((s, layer, cond_or_uncond))
        if found is None:
            if s not in self.sigmas:
                raise KeyError(f"the anchors {self.anchor_names} were recorded at sigmas {self.sigmas}, not at "
                               f"{s}: the steps or the strength changed since, so queue the anchors again")
            raise KeyError(f"the anchor record of {self.anchor_names} has no entry for layer {layer} at sigma {s} "
                           "(the anchor pass was interrupted, or the model changed): queue the anchors again")
        return found

    @property
    def anchor_names(self) -> str:
        return ", ".join(f"view_{a:02d}" for a in self.anchors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.features.values())

    def summary(self) -> str:
        layers = len({k[1] for k in self.features})
        return (f"anchors {self.anchor_names}: {len(self.sigmas)} step(s) x {layers} layer(s), "
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

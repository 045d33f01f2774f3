"""Chunk-invariant initial noise: a view's noise depends only on the set's seed and the view's index in the set.

ComfyUI's ``prepare_noise`` draws one tensor for the whole batch from the seed, so a view's noise depends on its
position in the batch and the same view changes with the chunking. Here each view has its own generator, seeded from
(seed, view index) through a hash, so view 7 gets the same noise alone, in a chunk of 4 or in the whole set, and
neighbouring seeds do not share views' noise (seed 42 view 1 is not seed 43 view 0).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def view_seed(seed: int, view_index: int) -> int:
    digest = hashlib.sha256(f"glimpse-view-noise/{int(seed)}/{int(view_index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def view_noise(shape: Sequence[int], seed: int, view_indices: Sequence[int],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise [B, ...] on the CPU, row b drawn from (seed, view_indices[b])."""
    if len(view_indices) != shape[0]:
        raise ValueError(f"noise for {shape[0]} latents but {len(view_indices)} view indices")
    rows = [torch.randn(tuple(shape[1:]), generator=torch.Generator().manual_seed(view_seed(seed, i)), dtype=dtype)
            for i in view_indices]
    return torch.stack(rows) if rows else torch.zeros(tuple(shape), dtype=dtype)

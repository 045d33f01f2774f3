"""How a VAE pass runs for GLIMPSE_SETTINGS: untiled, or ONE tiled pass with overlap blending; and the fp16 guard.

ComfyUI's tiled nodes (VAEEncodeTiled / VAEDecodeTiled, ``comfy.sd.VAE.encode_tiled_`` / ``decode_tiled_``) run
three full tiled passes with different tile shapes and average them: about 3x the work of one pass, 4x where every
tile shape covers the whole image. Here the settings' ``tiled_vae`` and ``vae_tile_size`` mean what runs:

- ``tiled_vae`` off, or an image that fits in one tile: one untiled pass;
- otherwise one pass over tiles of at most ``vae_tile_size`` px that overlap by :data:`OVERLAP_PX` and are blended
  with feathered weights (``comfy.utils.tiled_scale``, called once). The tiles are split evenly: the fewest tiles per
  side that cover it, all of one size, so no thin last tile repeats work. For the t4 preset at 1024 px that is 2x2
  tiles of 544 px.

:func:`tile_starts` is the tile schedule of ``comfy.utils.tiled_scale`` (ComfyUI v0.3.64), restated so the work of a
plan can be counted without ComfyUI; a test holds it to the real function.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

OVERLAP_PX = 64  # the overlap of ComfyUI's tiled VAE nodes (their default)
LATENT_SCALE = 8  # SDXL VAE: image pixels per latent pixel
FP16_SAFE_VAE = "sdxl_vae_fp16_fix.safetensors"  # madebyollin/sdxl-vae-fp16-fix, saved under this name in models/vae


@dataclass(frozen=True)
class VaePlan:
    """One VAE pass: untiled, or tiles of ``tile`` (height, width) px overlapping by ``overlap`` px, ``grid`` (rows,
    columns) of them per image."""

    tiled: bool
    height: int
    width: int
    tile: tuple[int, int] | None = None
    overlap: int = 0
    grid: tuple[int, int] = (1, 1)

    @property
    def tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    def latent(self) -> VaePlan:
        """The same plan in latent pixels (what decoding tiles)."""
        if not self.tiled:
            return VaePlan(False, self.height // LATENT_SCALE, self.width // LATENT_SCALE)
        return VaePlan(True, self.height // LATENT_SCALE, self.width // LATENT_SCALE,
                       (self.tile[0] // LATENT_SCALE, self.tile[1] // LATENT_SCALE), self.overlap // LATENT_SCALE,
                       self.grid)

    def tile_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every tile of one image, in the order ``comfy.utils.tiled_scale`` runs them."""
        if not self.tiled:
            return [(self.height, self.width)]
        rows = [min(self.tile[0], self.height - s) for s in tile_starts(self.height, self.tile[0], self.overlap)]
        cols = [min(self.tile[1], self.width - s) for s in tile_starts(self.width, self.tile[1], self.overlap)]
        return [(r, c) for r in rows for c in cols]

    def describe(self) -> str:
        if not self.tiled:
            return f"untiled ({self.width}x{self.height})"
        return (f"tiled, one pass: {self.grid[0]}x{self.grid[1]} tiles of {self.tile[1]}x{self.tile[0]} px, "
                f"overlap {self.overlap} px")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where ``comfy.utils.tiled_scale`` starts its tiles along a side of ``length`` (the last may be cut short)."""
    if length <= tile:
        return [0]
    return [max(0, min(length - overlap, p)) for p in range(0, length - overlap, tile - overlap)]


def even_tile(length: int, max_tile: int, overlap: int = OVERLAP_PX, align: int = LATENT_SCALE) -> int:
    """The tile side for ``length`` px: the fewest tiles of at most ``max_tile`` px (overlapping by ``overlap``) that
    cover it, made equal (rounded up to ``align`` px, never past ``max_tile``); ``length`` when one tile covers it."""
    if length <= max_tile:
        return length
    if max_tile <= overlap:
        raise ValueError(f"VAE tile size {max_tile} px must exceed the overlap of {overlap} px")
    n = math.ceil((length - overlap) / (max_tile - overlap))
    step = -(-(length - overlap) // n)
    return min(max_tile, -(-(step + overlap) // align) * align)


def plan_vae(tiled: bool, tile_size: int, height: int, width: int, overlap: int = OVERLAP_PX) -> VaePlan:
    """The pass for an image of ``height`` x ``width`` px under settings ``tiled_vae=tiled, vae_tile_size=tile_size``
    (see the module docstring)."""
    if height % LATENT_SCALE or width % LATENT_SCALE:
        raise ValueError(f"VAE images must be multiples of {LATENT_SCALE} px, got {width}x{height}")
    if not tiled or (height <= tile_size and width <= tile_size):
        return VaePlan(False, height, width)
    tile = (even_tile(height, tile_size, overlap), even_tile(width, tile_size, overlap))
    grid = (len(tile_starts(height, tile[0], overlap)), len(tile_starts(width, tile[1], overlap)))
    return VaePlan(True, height, width, tile, overlap, grid)


def plan_for(settings, height: int, width: int) -> VaePlan:
    """:func:`plan_vae` with a GLIMPSE_SETTINGS value's ``tiled_vae`` and ``vae_tile_size``."""
    return plan_vae(settings.tiled_vae, settings.vae_tile_size, height, width)


def nonfinite_items(x: torch.Tensor) -> list[int]:
    """Indices along dim 0 of ``x`` whose values are not all finite (an fp16 overflow shows as inf, then NaN)."""
    return torch.nonzero(~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)).flatten().tolist()


def guarded(run, x: torch.Tensor, fallback, what: str, log) -> tuple[torch.Tensor, list[int]]:
    """``run(x)``, then every item of the batch whose result is not finite again with ``fallback`` (fp32), logged.
    Returns the result and the indices that were redone."""
    out = run(x)
    bad = nonfinite_items(out)
    if bad:
        log.warning("%s: item(s) %s of this chunk overflowed in fp16 (NaN/inf); redone in fp32. An fp16-safe VAE "
                    "(madebyollin/sdxl-vae-fp16-fix as models/vae/%s) avoids the second pass", what,
                    ", ".join(map(str, bad)), FP16_SAFE_VAE)
        idx = torch.tensor(bad, device=x.device)
        out[idx.to(out.device)] = fallback(x[idx]).to(out.dtype)
        still = [bad[i] for i in nonfinite_items(out[idx.to(out.device)])]
        if still:
            raise FloatingPointError(f"{what}: item(s) {still} of this chunk are not finite in fp32 either")
    return out, bad

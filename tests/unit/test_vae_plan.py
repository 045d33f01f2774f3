"""glimpse.vae: the VAE pass each preset names (the same in the memory plan and in the nodes), the even tile layout,
and the fp16 guard."""
import logging
import math
from dataclasses import replace

import pytest
import torch

from glimpse.presets import (
    CONTROLNET_PARAMS,
    PRESETS,
    VAE_DECODE_PER_LATENT_PX,
    VAE_ENCODE_PER_PX,
    controlnet_size_of,
    estimate_memory,
    working_size,
)
from glimpse.vae import LATENT_SCALE, OVERLAP_PX, even_tile, guarded, plan_for, plan_vae, tile_starts

NAMED = [n for n in PRESETS if n != "custom"]


@pytest.mark.parametrize("name", NAMED)
def test_each_preset_runs_the_pass_its_memory_plan_budgets(name):
    s = PRESETS[name]
    w, h = working_size(s.resolution)
    plan = plan_for(s, h, w)
    est = estimate_memory(s, vae_dtype_bytes=2)
    assert plan.tiled == s.tiled_vae  # at its own resolution every tiled preset really tiles
    if plan.tiled:
        assert max(plan.tile) <= s.vae_tile_size and plan.tiles > 1
        # the plan budgets a whole vae_tile_size tile: an upper bound of every tile that runs
        assert est.vae_decode_peak == VAE_DECODE_PER_LATENT_PX * (s.vae_tile_size // LATENT_SCALE) ** 2 * 2
        assert est.vae_encode_peak == VAE_ENCODE_PER_PX * s.vae_tile_size ** 2 * 2
        assert all(th * tw <= s.vae_tile_size ** 2 for th, tw in plan.tile_shapes())
    else:
        assert plan.tile_shapes() == [(h, w)]
        assert est.vae_decode_peak == VAE_DECODE_PER_LATENT_PX * (h // LATENT_SCALE) * (w // LATENT_SCALE) * 2


def test_t4_preset_tiles_1024_px_in_2x2_tiles_of_544():
    plan = plan_for(PRESETS["t4_balanced"], 1024, 1024)
    assert plan.tiled and plan.grid == (2, 2) and plan.tile == (544, 544) and plan.overlap == OVERLAP_PX
    assert plan.tile_shapes() == [(544, 544)] * 4
    lat = plan.latent()
    assert lat.tile == (68, 68) and lat.overlap == 8 and lat.tile_shapes() == [(68, 68)] * 4
    assert "2x2 tiles of 544x544 px" in plan.describe()
    # the planned tiles are also under the t4 plan's 10 GiB with an fp16 VAE
    assert estimate_memory(PRESETS["t4_balanced"], vae_dtype_bytes=2).peak < 10 * 2 ** 30


@pytest.mark.parametrize("length,max_tile", [(1024, 544), (1024, 384), (768, 256), (1024, 512), (960, 320),
                                             (1088, 544), (640, 576), (2048, 544)])
def test_even_tiles_cover_the_side_with_the_fewest_equal_tiles(length, max_tile):
    tile = even_tile(length, max_tile)
    assert tile <= max_tile and tile % LATENT_SCALE == 0
    starts = tile_starts(length, tile, OVERLAP_PX)
    assert starts[0] == 0 and starts[-1] + tile >= length  # covered
    assert all(b - a <= tile - OVERLAP_PX for a, b in zip(starts, starts[1:]))  # overlapping neighbours
    fewest = math.ceil((length - OVERLAP_PX) / (max_tile - OVERLAP_PX))
    assert len(starts) == fewest
    covered = sum(min(tile, length - s) for s in starts)
    assert covered - length <= (len(starts) - 1) * OVERLAP_PX + LATENT_SCALE * len(starts)  # no sliver repeats work


def test_untiled_when_not_asked_or_when_one_tile_covers_the_image():
    assert not plan_vae(False, 256, 1024, 1024).tiled
    assert not plan_vae(True, 1024, 1024, 768).tiled
    plan = plan_vae(True, 512, 512, 1024)  # only the long side is split: 2 tiles of 512 leave no overlap, so 3
    assert plan.tiled and plan.grid == (1, 3) and plan.tile == (512, 384)
    with pytest.raises(ValueError, match="multiples of 8"):
        plan_vae(True, 512, 100, 100)
    with pytest.raises(ValueError, match="must exceed the overlap"):
        even_tile(1024, 64)


def test_settings_fields_decide_the_plan():
    custom = replace(PRESETS["custom"], tiled_vae=False)
    assert not plan_for(custom, 1024, 1024).tiled
    custom = replace(custom, tiled_vae=True, vae_tile_size=160)
    assert plan_for(custom, 256, 256).grid == (2, 2)


def test_guard_redoes_only_the_non_finite_items_with_the_fallback(caplog):
    x = torch.arange(3, dtype=torch.float32)[:, None].repeat(1, 4)

    def half(t):
        out = t.clone()
        out[t[:, 0] == 1] = float("inf")
        return out

    seen = []

    def full(t):
        seen.append(t.clone())
        return t * 10

    with caplog.at_level(logging.WARNING):
        out, redone = guarded(half, x, full, "GlimpseVAEDecode", logging.getLogger("test"))
    assert redone == [1] and len(seen) == 1 and torch.equal(seen[0], x[1:2])
    assert torch.equal(out[1], x[1] * 10) and torch.equal(out[0], x[0]) and torch.equal(out[2], x[2])
    assert "overflowed in fp16" in caplog.text and "item(s) 1 " in caplog.text
    assert "sdxl_vae_fp16_fix.safetensors" in caplog.text
    with pytest.raises(FloatingPointError, match="not finite in fp32 either"):
        guarded(half, x, lambda t: t * float("nan"), "GlimpseVAEDecode", logging.getLogger("test"))
    out, redone = guarded(lambda t: t + 1, x, full, "x", logging.getLogger("test"))
    assert redone == [] and torch.equal(out, x + 1)


def test_controlnet_size_class_of_a_parameter_count():
    assert controlnet_size_of(CONTROLNET_PARAMS["full"]) == "full"
    assert controlnet_size_of(CONTROLNET_PARAMS["small"]) == "small"
    assert controlnet_size_of(79_000_000) == "small"  # T2I-Adapter depth
    assert controlnet_size_of(2_000_000_000) == "full"

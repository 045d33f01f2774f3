"""GlimpseVAEEncode / GlimpseVAEDecode in a real ComfyUI on the standalone VAE fixtures (tests/fixtures/vae.py):
the pass each preset's settings name runs (one untiled pass, or ONE tiled pass through comfy.utils.tiled_scale, never
core's three-pass encode_tiled_/decode_tiled_), and the fp16 guard: the VAE that overflows in fp16 gives finite views
redone in fp32 and says so in the log, the fp16-safe one runs in fp16 throughout."""
from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from glimpse.presets import PRESETS
from glimpse.vae import plan_for, plan_vae, tile_starts

FIX = "sdxl_vae_fp16_fix.safetensors"
OVERFLOW = "sdxl_vae_fp16_overflow.safetensors"


@pytest.fixture(scope="module")
def vaes(comfy):
    (fix,) = comfy.run("VAELoader", vae_name=FIX)
    (overflow,) = comfy.run("VAELoader", vae_name=OVERFLOW)
    yield SimpleNamespace(fix=fix, overflow=overflow)
    del fix, overflow
    comfy.free()


def text(result) -> str:
    return "".join(result.ui["text"])


@pytest.fixture
def passes(monkeypatch):
    """Counts comfy.utils.tiled_scale calls and fails on ComfyUI's three-pass tiled VAE."""
    import comfy.sd
    import comfy.utils

    calls = []
    tiled_scale = comfy.utils.tiled_scale

    def counted(samples, function, tile_x=64, tile_y=64, overlap=8, **kw):
        calls.append((tuple(samples.shape), tile_y, tile_x, overlap))
        return tiled_scale(samples, function, tile_x, tile_y, overlap, **kw)

    def refused(*a, **kw):
        raise AssertionError("ComfyUI's three-pass tiled VAE ran")

    monkeypatch.setattr(comfy.utils, "tiled_scale", counted)
    monkeypatch.setattr(comfy.sd.VAE, "decode_tiled_", refused)
    monkeypatch.setattr(comfy.sd.VAE, "encode_tiled_", refused)
    return calls


@pytest.mark.parametrize("name", [n for n in PRESETS if n != "custom"])
def test_each_preset_runs_the_pass_its_plan_names(comfy, vaes, passes, name):
    """At 256 px with 160 px tiles a tiled preset splits into 2x2 tiles, as t4_balanced does at 1024 px with 544."""
    s = PRESETS[name]
    if s.tiled_vae:
        s = replace(s, vae_tile_size=160)
    plan = plan_for(s, 256, 256)
    assert plan.tiled == s.tiled_vae
    enc = comfy.run("GlimpseVAEEncode", pixels=torch.rand(1, 256, 256, 3), vae=vaes.fix, settings=s, fp16="never")
    dec = comfy.run("GlimpseVAEDecode", samples=enc[0], vae=vaes.fix, settings=s, fp16="never")
    assert dec[0].shape == (1, 256, 256, 3)
    for result in (enc, dec):
        assert text(result).startswith(plan.describe()), text(result)
    if plan.tiled:  # one tiled pass each way, with the planned tiles (latent tiles for the decode)
        assert passes == [((1, 3, 256, 256), 160, 160, 64), ((1, 4, 32, 32), 20, 20, 8)]
        assert "2x2 tiles of 160x160 px" in text(dec)
    else:
        assert passes == []


def test_one_tiled_pass_runs_each_planned_tile_once(comfy, vaes, passes):
    shapes = []
    decode = vaes.fix.first_stage_model.decode

    def recorded(z, **kw):
        shapes.append(tuple(z.shape[-2:]))
        return decode(z, **kw)

    vaes.fix.first_stage_model.decode = recorded
    try:
        (latent,) = comfy.run("GlimpseVAEEncode", pixels=torch.rand(2, 192, 320, 3), vae=vaes.fix, tiled=True,
                              tile_size=128, fp16="never")
        (image,) = comfy.run("GlimpseVAEDecode", samples=latent, vae=vaes.fix, tiled=True, tile_size=128,
                             fp16="never")
    finally:
        del vaes.fix.first_stage_model.decode
    plan = plan_vae(True, 128, 192, 320).latent()
    assert image.shape == (2, 192, 320, 3) and len(passes) == 2
    assert shapes == plan.tile_shapes() * 2  # every tile of each view, once
    assert plan.grid == (len(tile_starts(24, plan.tile[0], 8)), len(tile_starts(40, plan.tile[1], 8)))


def test_fp16_guard_redoes_overflowing_views_in_fp32(comfy, vaes, caplog):
    pixels, latent = torch.rand(2, 64, 64, 3), {"samples": torch.randn(2, 4, 8, 8)}
    with caplog.at_level(logging.WARNING):
        enc = comfy.run("GlimpseVAEEncode", pixels=pixels, vae=vaes.overflow, fp16="always")
        dec = comfy.run("GlimpseVAEDecode", samples=latent, vae=vaes.overflow, fp16="always")
    warnings = [r.getMessage() for r in caplog.records if "overflowed in fp16" in r.getMessage()]
    assert len(warnings) == 2 and all("item(s) 0, 1 " in w and "redone in fp32" in w for w in warnings)
    assert "GlimpseVAEEncode" in warnings[0] and "GlimpseVAEDecode" in warnings[1]
    for result in (enc, dec):
        assert "float16; item(s) 0, 1 redone in float32" in text(result)
    # the redone views are the VAE's own fp32 pass, exactly (the harness also checks every output is finite)
    (enc32,) = comfy.run("GlimpseVAEEncode", pixels=pixels, vae=vaes.overflow, fp16="never")
    (dec32,) = comfy.run("GlimpseVAEDecode", samples=latent, vae=vaes.overflow, fp16="never")
    assert torch.equal(enc[0]["samples"], enc32["samples"]) and torch.equal(dec[0], dec32)


def test_fp16_safe_vae_runs_in_fp16_without_a_redo(comfy, vaes, caplog):
    pixels = torch.rand(2, 64, 64, 3)
    with caplog.at_level(logging.WARNING):
        half = comfy.run("GlimpseVAEEncode", pixels=pixels, vae=vaes.fix, fp16="always")
    full = comfy.run("GlimpseVAEEncode", pixels=pixels, vae=vaes.fix, fp16="never")
    assert not [r for r in caplog.records if "overflowed" in r.getMessage()]
    assert text(half).endswith("float16") and text(full).endswith("float32")
    assert vaes.fix.vae_dtype == torch.float32, "the graph's VAE is left in its own dtype"
    a, b = half[0]["samples"], full[0]["samples"]
    assert not torch.equal(a, b) and (a - b).abs().max() < 1e-2 * b.abs().max() + 1e-3
    auto = comfy.run("GlimpseVAEDecode", samples=full[0], vae=vaes.fix)
    assert text(auto).endswith("float32"), "auto: a CPU (or a card with bf16) keeps ComfyUI's own VAE dtype"

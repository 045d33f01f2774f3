"""Presets, the memory estimate and the memory report text (glimpse.presets, glimpse.memory_report)."""
from dataclasses import replace

import pytest

from glimpse.lightning import plan_img2img
from glimpse.memory_report import LoadedModel, MemoryState, format_report, needs_warning
from glimpse.presets import (
    GIB,
    PRESET_NAMES,
    PRESETS,
    estimate_memory,
    preset_settings,
    validate_settings,
    working_size,
)
from glimpse.types import Settings


def test_every_preset_is_valid_and_named():
    assert set(PRESETS) == set(PRESET_NAMES)
    for name, s in PRESETS.items():
        assert isinstance(s, Settings) and s.preset == name
        validate_settings(s)
        assert s.resolution % 64 == 0
        assert plan_img2img(s.steps, s.strength).executed >= 1


def test_seed_numbers():
    t4, q, sp = PRESETS["t4_balanced"], PRESETS["quality"], PRESETS["speed"]
    assert (t4.steps, t4.strength, t4.controlnet_strength) == (4, 0.75, 0.5)
    assert (q.steps, q.strength) == (4, 0.65)
    assert (sp.steps, sp.strength) == (2, 0.5)


def test_t4_balanced_at_1024_stays_under_10_gib_with_everything_resident():
    s = PRESETS["t4_balanced"]
    assert s.resolution == 1024
    # the t4 workflow's fp16-safe VAE runs in fp16 on a T4 (no bf16)
    e = estimate_memory(s, aspect=1.0, vae_dtype_bytes=2, with_controlnet=True, with_clip=True)
    assert (e.width, e.height) == (1024, 1024)
    assert e.peak < 10 * GIB
    assert 4.7 * GIB < e.unet_weights < 4.9 * GIB  # SDXL UNet fp16
    # a checkpoint VAE in fp32 (2x2 tiles of 544 px) still leaves a 15 GiB T4 room to spare
    assert estimate_memory(s, vae_dtype_bytes=4).peak < 10.5 * GIB


def test_estimate_orders_presets_and_scales_with_chunk_and_resolution():
    peak = {n: estimate_memory(PRESETS[n]).peak for n in PRESET_NAMES}
    assert peak["t4_minimal"] < peak["t4_balanced"] < peak["speed"] < peak["quality"]
    base = PRESETS["custom"]
    one = estimate_memory(replace(base, views_per_chunk=1))
    four = estimate_memory(replace(base, views_per_chunk=4))
    assert four.sampling_activations == pytest.approx(4 * one.sampling_activations, rel=1e-6)
    assert four.vae_decode_peak == one.vae_decode_peak  # tiled: per tile, not per batch
    untiled = estimate_memory(replace(base, tiled_vae=False))
    assert untiled.vae_decode_peak > one.vae_decode_peak
    fp8 = estimate_memory(replace(base, unet_dtype="fp8_e4m3fn"))
    assert fp8.unet_weights * 2 == one.unet_weights
    assert estimate_memory(base, vae_dtype_bytes=2).vae_decode_peak * 2 == one.vae_decode_peak
    no_clip = estimate_memory(base, with_clip=False)
    assert no_clip.phases()["sampling"] < one.phases()["sampling"]
    assert no_clip.phases()["anchor sampling"] == one.phases()["anchor sampling"]  # the anchor pass moves CLIP out
    small = estimate_memory(replace(base, resolution=512))
    assert small.sampling_activations == pytest.approx(one.sampling_activations / 4, rel=1e-6)


def test_working_size():
    assert working_size(1024) == (1024, 1024)
    assert working_size(1024, 16 / 9) == (576, 1024)  # (h, w): landscape is wider than high
    assert working_size(1024, 9 / 16) == (1024, 576)


def test_custom_preset_uses_fields_and_named_presets_ignore_them():
    s = preset_settings("custom", steps=8, strength=0.4, resolution=768)
    assert (s.preset, s.steps, s.strength, s.resolution) == ("custom", 8, 0.4, 768)
    assert preset_settings("quality", steps=8) == PRESETS["quality"]
    with pytest.raises(ValueError, match="resolution 1000 must be a multiple of 64"):
        preset_settings("custom", resolution=1000)
    # CPU smoke runs work at 64-128 px; below one latent tile of 64 px nothing is valid.
    assert preset_settings("custom", resolution=128).resolution == 128
    with pytest.raises(ValueError, match="resolution 0 must be a multiple of 64, at least 64"):
        preset_settings("custom", resolution=0)
    with pytest.raises(ValueError, match=r"strength 0.0 is outside \(0, 1\]"):
        preset_settings("custom", strength=0.0)
    with pytest.raises(ValueError, match="steps 3 is not"):
        preset_settings("custom", steps=3)
    with pytest.raises(ValueError, match="unet_dtype 'int4'"):
        preset_settings("custom", unet_dtype="int4")
    with pytest.raises(ValueError, match="preset 'huge'"):
        preset_settings("huge")


def _state(free_gib, models=(), peak=None):
    return MemoryState(device="cuda:0 Tesla T4", vram_total=15 * GIB, vram_free=int(free_gib * GIB),
                       ram_total=12 * GIB, ram_free=8 * GIB, loaded_models=list(models), peak_allocated=peak)


def test_report_lists_models_peak_and_estimate():
    s = PRESETS["t4_balanced"]
    e = estimate_memory(s)
    models = [LoadedModel("SDXL", int(4.78 * GIB), int(4.78 * GIB)), LoadedModel("AutoencoderKL", int(0.3 * GIB), 0)]
    text = format_report(_state(9.0, models, peak=int(7.5 * GIB)), s, e)
    assert "device: cuda:0 Tesla T4" in text
    assert "VRAM: 9.00 GiB free of 15.00 GiB" in text
    assert "SDXL: 4.78 GiB (4.78 GiB on device)" in text
    assert "AutoencoderKL: 0.30 GiB (0.00 GiB on device)" in text
    assert "peak allocated since last report: 7.50 GiB" in text
    assert f"estimate (VAE fp32): {e.peak / GIB:.2f} GiB at {e.peak_phase}" in text
    assert f"anchor sampling {e.phases()['anchor sampling'] / GIB:.2f} GiB" in text
    assert "preset t4_balanced: 4 steps, strength 0.75" in text
    assert f"anchor record {e.anchor_record / GIB:.2f} GiB in CPU RAM" in text
    assert "WARNING" not in text
    held = MemoryState(device="cpu", vram_total=1, vram_free=1, ram_total=1, ram_free=1,
                       anchor_records=["anchors view_00, view_04: 3 step(s) x 70 layer(s), 2.0 MiB on cpu"])
    assert "anchor record held: anchors view_00, view_04: 3 step(s)" in format_report(held, s, e)


def test_report_warns_when_estimate_exceeds_free_plus_own_models():
    s = PRESETS["quality"]
    e = estimate_memory(s)
    state = _state(6.0, peak=None)
    assert needs_warning(state, e)
    text = format_report(state, s, e)
    assert "WARNING: the estimate" in text and "--lowvram" in text
    assert "n/a (no CUDA device)" in text
    assert "models loaded by ComfyUI: none" in text
    cpu = format_report(MemoryState("cpu", 24 * GIB, 14 * GIB, 24 * GIB, 14 * GIB), s, e)
    assert "VRAM" not in cpu and "compute device is the CPU" in cpu and "RAM: 14.00 GiB free of 24.00 GiB" in cpu
    # memory held by ComfyUI's own models counts as available (it would offload them)
    assert not needs_warning(_state(6.0, [LoadedModel("SDXL", 20 * GIB, 20 * GIB)]), e)


def test_cross_view_plan_counts_the_anchor_batch_and_the_record():
    t4 = estimate_memory(PRESETS["t4_balanced"], vae_dtype_bytes=2)  # the t4 workflow's fp16-safe VAE
    assert PRESETS["t4_balanced"].cross_view == "correspondence"
    # the anchors (4) are one batch: the largest phase on a T4, still under 10 GiB, the record kept in CPU RAM
    assert t4.peak_phase == "anchor sampling" and t4.peak < 10 * GIB
    assert t4.anchor_activations == pytest.approx(4 * t4.sampling_activations, rel=1e-6)
    assert not t4.record_on_gpu
    # 4 anchors x 3 executed steps (strength 0.75 of 4) x (10 x 64^2 x 640 + 60 x 32^2 x 1280) fp16 values
    assert t4.anchor_record == 4 * 3 * (10 * 4096 * 640 + 60 * 1024 * 1280) * 2
    assert 200e6 < t4.anchor_record / 12 < 220e6  # about 210 MB per anchor and step
    quality = estimate_memory(PRESETS["quality"])
    assert quality.record_on_gpu and quality.peak <= 22 * GIB
    assert quality.phases()["sampling"] - estimate_memory(
        replace(PRESETS["quality"], cross_view="off")).phases()["sampling"] > quality.anchor_record
    off = estimate_memory(replace(PRESETS["t4_balanced"], cross_view="off"))
    assert off.anchor_activations == off.anchor_record == 0 and "anchor sampling" not in off.phases()


def test_cross_view_settings_are_validated():
    with pytest.raises(ValueError, match="cross_view 'mutual' is not one of"):
        preset_settings("custom", cross_view="mutual")
    with pytest.raises(ValueError, match="anchor_count 0"):
        preset_settings("custom", anchor_count=0)

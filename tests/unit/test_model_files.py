"""SDXL-shape checks from safetensors headers (glimpse.model_files), on small files written here."""
import struct

import pytest
import torch
from safetensors.torch import save_file

from glimpse.model_files import check_sdxl_lora, check_sdxl_unet, lora_shape, read_safetensors_header, unet_shape


def _save(path, shapes):
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    return path


def _unet(prefix, context, adm, diffusers=False):
    if diffusers:
        keys = {"conv_in.weight": (320, 4, 3, 3),
                "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": (640, context)}
        if adm:
            keys["add_embedding.linear_1.weight"] = (1280, adm)
    else:
        keys = {"input_blocks.0.0.weight": (320, 4, 3, 3),
                "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (640, context)}
        if adm:
            keys["label_emb.0.0.weight"] = (1280, adm)
    return {prefix + k: v for k, v in keys.items()}


def _lora(context, style="kohya", rank=4):
    if style == "kohya":
        base = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        return {f"{base}.lora_down.weight": (rank, context), f"{base}.lora_up.weight": (640, rank),
                f"{base}.alpha": ()}
    base = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v"
    return {f"{base}.lora.down.weight": (rank, context), f"{base}.lora.up.weight": (640, rank)}


def test_header_reads_shapes_without_metadata(tmp_path):
    p = _save(tmp_path / "a.safetensors", {"x": (2, 3)})
    h = read_safetensors_header(p)
    assert list(h) == ["x"] and h["x"]["shape"] == [2, 3]


def test_header_rejects_missing_and_non_safetensors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        read_safetensors_header(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"not json!!" + b"\0" * 20)
    with pytest.raises(ValueError, match="bad.safetensors is not a safetensors file"):
        read_safetensors_header(bad)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="short.safetensors is not a safetensors file"):
        read_safetensors_header(short)


@pytest.mark.parametrize(("prefix", "diffusers"), [("", False), ("model.diffusion_model.", False), ("", True)])
def test_sdxl_unet_accepted_in_every_layout(tmp_path, prefix, diffusers):
    p = _save(tmp_path / "u.safetensors", _unet(prefix, 2048, 2816, diffusers))
    shape = check_sdxl_unet(read_safetensors_header(p), "u.safetensors")
    assert shape.family == "SDXL" and shape.adm_in == 2816


@pytest.mark.parametrize("diffusers", [False, True])
def test_sd15_unet_rejected_naming_the_file(tmp_path, diffusers):
    p = _save(tmp_path / "sd15_unet.safetensors", _unet("", 768, None, diffusers))
    with pytest.raises(ValueError, match=r"sd15_unet\.safetensors is not an SDXL UNet: .*768-dim .*SD1\.x"):
        check_sdxl_unet(read_safetensors_header(p), "sd15_unet.safetensors")


def test_checkpoint_ignores_vae_and_clip_keys(tmp_path):
    shapes = _unet("model.diffusion_model.", 2048, 2816)
    shapes["conditioner.embedders.1.model.transformer.resblocks.0.attn2.to_k.weight"] = (4, 1280)  # not UNet
    shapes["first_stage_model.decoder.conv_in.weight"] = (4, 4, 3, 3)
    assert unet_shape(read_safetensors_header(_save(tmp_path / "c.safetensors", shapes))).is_sdxl


def test_unet_without_unet_keys_rejected(tmp_path):
    p = _save(tmp_path / "vae.safetensors", {"decoder.conv_in.weight": (4, 4, 3, 3)})
    with pytest.raises(ValueError, match=r"vae\.safetensors is not a checkpoint: it has no UNet weights"):
        check_sdxl_unet(read_safetensors_header(p), "vae.safetensors", role="checkpoint")


@pytest.mark.parametrize("style", ["kohya", "diffusers"])
def test_sdxl_lora_accepted(tmp_path, style):
    p = _save(tmp_path / "l.safetensors", _lora(2048, style))
    assert check_sdxl_lora(read_safetensors_header(p), "l.safetensors").context_dims == {2048}


@pytest.mark.parametrize(("context", "family"), [(768, "SD1.x"), (1024, "SD2.x")])
def test_non_sdxl_lora_rejected_naming_the_file(tmp_path, context, family):
    p = _save(tmp_path / "sd_lora.safetensors", _lora(context))
    assert lora_shape(read_safetensors_header(p)).family == family
    with pytest.raises(ValueError, match=rf"sd_lora\.safetensors is not an SDXL LoRA: .* {context}-dim .*{family}"):
        check_sdxl_lora(read_safetensors_header(p), "sd_lora.safetensors")


def test_text_encoder_only_lora_rejected(tmp_path):
    p = _save(tmp_path / "te.safetensors", {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 768)})
    with pytest.raises(ValueError, match=r"te\.safetensors is not a UNet LoRA"):
        check_sdxl_lora(read_safetensors_header(p), "te.safetensors")

"""What a model file is, from its safetensors header alone (key names and shapes; no tensor data is read).

Used to reject a LoRA, UNet or checkpoint that is not SDXL-shaped *before* any model work: ComfyUI itself loads an
SD1.5 LoRA onto SDXL with only ``lora key not loaded`` warnings and samples with the base model. Formats are told
apart by keys, not by file names:

- the text-context width of the UNet's cross-attention (``attn2.to_k`` input features): 768 for SD1.x, 1024 for SD2.x,
  2048 for SDXL (and its distillations: Lightning, Vega, SSD-1B);
- the size of the pooled/size conditioning input (``label_emb.0.0`` / ``add_embedding.linear_1``): 2816 for SDXL,
  absent for SD1.x.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

SDXL_CONTEXT_DIM = 2048
SDXL_ADM_IN = 2816
_FAMILY_BY_CONTEXT = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}
_MAX_HEADER = 100 * 1024 * 1024

# Down-projection weight names of a LoRA pair, as written by kohya / diffusers / PEFT.
_LORA_DOWN = ("lora_down.weight", "lora.down.weight", "lora_A.weight", "lora_A.default.weight")
_ADM_KEYS = ("label_emb.0.0.weight", "add_embedding.linear_1.weight")


def read_safetensors_header(path: str | Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file: ``{name: {"dtype", "shape", "data_offsets"}}`` (no metadata).

    Raises FileNotFoundError / ValueError naming the file when it is missing, not a safetensors file, or truncated
    (its header describes more tensor data than the file holds), before any loader sees it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is not a safetensors file (only {len(head)} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n <= 1 or n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path.name} is not a safetensors file (header length {n} does not fit its {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path.name} is not a safetensors file (its header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} is not a safetensors file (its header is not a JSON object)")
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "shape" in v}
    _check_data_size(path, tensors, size - 8 - n)
    return tensors


def _check_data_size(path: Path, tensors: dict[str, dict], available: int) -> None:
    """The header's tensor data must end exactly where the file does (what safetensors itself demands on load)."""
    end = 0
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{path.name} is not a safetensors file (tensor {name!r} has data_offsets {offsets!r})")
        end = max(end, offsets[1])
    if end > available:
        raise ValueError(f"{path.name} is truncated: its header describes {end} bytes of tensor data but only "
                         f"{available} follow it (an interrupted download or copy?); fetch the file again")
    if end < available:
        raise ValueError(f"{path.name} is not a valid safetensors file: {available - end} bytes follow the "
                         f"{end} bytes of tensor data its header describes")


@dataclass(frozen=True)
class UNetShape:
    """The architecture facts a header tells about a UNet (or the UNet part of a LoRA / checkpoint)."""

    context_dims: frozenset[int]
    adm_in: int | None
    n_keys: int

    @property
    def family(self) -> str:
        if len(self.context_dims) == 1:
            (c,) = self.context_dims
            return _FAMILY_BY_CONTEXT.get(c, f"unknown ({c}-dim text context)")
        if not self.context_dims:
            return "unknown (no cross-attention)"
        return f"mixed ({sorted(self.context_dims)}-dim text contexts)"

    @property
    def is_sdxl(self) -> bool:
        return self.context_dims == frozenset({SDXL_CONTEXT_DIM}) and self.adm_in in (None, SDXL_ADM_IN)


def unet_shape(header: dict[str, dict]) -> UNetShape:
    """Architecture facts of a UNet or full checkpoint header (ldm/SGM or diffusers key layout)."""
    contexts = {int(v["shape"][1]) for k, v in header.items()
                if k.endswith("attn2.to_k.weight") and len(v["shape"]) == 2 and _is_unet_key(k)}
    adm = None
    for k, v in header.items():
        if k.endswith(_ADM_KEYS) and _is_unet_key(k) and len(v["shape"]) == 2:
            adm = int(v["shape"][1])
            break
    return UNetShape(frozenset(contexts), adm, sum(1 for k in header if _is_unet_key(k)))


def lora_shape(header: dict[str, dict]) -> UNetShape:
    """Architecture facts of a LoRA header: the text-context width its UNet cross-attention pairs expect."""
    unet_keys = [k for k in header if _is_lora_unet_key(k)]
    contexts = set()
    for k in unet_keys:
        low = k.lower()
        if "attn2" in low and ("to_k" in low or "to_v" in low) and k.endswith(_LORA_DOWN):
            shape = header[k]["shape"]
            if len(shape) == 2:
                contexts.add(int(shape[1]))
    return UNetShape(frozenset(contexts), None, len(unet_keys))


def check_sdxl_unet(header: dict[str, dict], filename: str, role: str = "UNet") -> UNetShape:
    """Raise ValueError naming ``filename`` unless the UNet / checkpoint header is SDXL-shaped."""
    shape = unet_shape(header)
    if shape.n_keys == 0:
        raise ValueError(f"{filename} is not a {role}: it has no UNet weights "
                         "(expected keys like input_blocks.* or down_blocks.*)")
    why = []
    if shape.context_dims != frozenset({SDXL_CONTEXT_DIM}):
        why.append(f"its cross-attention expects {_dims(shape)}-dim text embeddings ({shape.family})")
    if shape.adm_in is None:
        why.append("it has no SDXL pooled/size conditioning input (label_emb / add_embedding)")
    elif shape.adm_in != SDXL_ADM_IN:
        why.append(f"its pooled/size conditioning input is {shape.adm_in}-dim")
    if why:
        raise ValueError(f"{filename} is not an SDXL {role}: {'; '.join(why)}. SDXL-Lightning needs an SDXL model "
                         f"({SDXL_CONTEXT_DIM}-dim text context, {SDXL_ADM_IN}-dim pooled/size input)")
    return shape


def check_sdxl_lora(header: dict[str, dict], filename: str) -> UNetShape:
    """Raise ValueError naming ``filename`` unless the LoRA header targets an SDXL UNet."""
    shape = lora_shape(header)
    if shape.n_keys == 0:
        raise ValueError(f"{filename} is not a UNet LoRA: none of its {len(header)} keys targets a UNet "
                         "(expected lora_unet_* / unet.* / diffusion_model.* keys)")
    if not shape.context_dims:
        raise ValueError(f"{filename} has no cross-attention (attn2 to_k/to_v) LoRA pairs, so it cannot be checked "
                         "against SDXL; an SDXL-Lightning LoRA has them")
    if shape.context_dims != frozenset({SDXL_CONTEXT_DIM}):
        raise ValueError(f"{filename} is not an SDXL LoRA: its cross-attention pairs expect "
                         f"{_dims(shape)}-dim text embeddings ({shape.family}); SDXL-Lightning LoRAs "
                         f"expect {SDXL_CONTEXT_DIM} (SDXL). ComfyUI would skip its keys with only a warning and "
                         "sample with the base model")
    return shape


def _dims(shape: UNetShape) -> str:
    return "/".join(str(c) for c in sorted(shape.context_dims)) or "no"


def _is_unet_key(k: str) -> bool:
    if k.startswith("model.diffusion_model."):
        return True
    if k.startswith(("first_stage_model.", "conditioner.", "cond_stage_model.", "text_encoder", "vae.")):
        return False
    return k.startswith(("input_blocks.", "middle_block.", "output_blocks.", "label_emb.", "time_embed.", "out.",
                         "down_blocks.", "mid_block.", "up_blocks.", "add_embedding.", "time_embedding.", "conv_in.",
                         "conv_out.", "conv_norm_out."))


def _is_lora_unet_key(k: str) -> bool:
    low = k.lower()
    return low.startswith(("lora_unet_", "unet.", "diffusion_model.", "model.diffusion_model.", "lora_unet.",
                           "base_model.model.down_blocks", "base_model.model.up_blocks", "base_model.model.mid_block",
                           "down_blocks.", "up_blocks.", "mid_block.", "input_blocks.", "output_blocks.",
                           "middle_block."))

"""Monocular depth from a transformers depth model folder (Depth Anything and other DPT-style estimators).

A folder holds the model as ``*.safetensors`` + ``config.json`` and optionally ``preprocessor_config.json``, the layout
Hugging Face publishes (e.g. depth-anything/Depth-Anything-V2-Small-hf). :func:`load_estimator` reads it offline,
safetensors only, into a :class:`DepthEstimator`: the model with its preprocessing, so one call maps IMAGE views to
relative inverse depth. Which device it runs on, and when it is loaded there, is the caller's business.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

# DPT's preprocessing as Depth Anything publishes it; a folder's preprocessor_config.json overrides these keys.
DEFAULT_PREPROCESSING = {"size": {"height": 518, "width": 518}, "ensure_multiple_of": 14,
                         "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


def is_estimator_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a config.json and a safetensors model."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def folder_stamp(folder: Path) -> tuple:
    """The folder and the names and modification times of its files: changes when the model is replaced."""
    return str(folder), tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()))


def read_preprocessing(folder: Path) -> dict:
    """:data:`DEFAULT_PREPROCESSING` updated with the keys of the folder's preprocessor_config.json it has."""
    pre = dict(DEFAULT_PREPROCESSING)
    pre_file = folder / "preprocessor_config.json"
    if pre_file.is_file():
        pre.update({k: v for k, v in json.loads(pre_file.read_text(encoding="utf-8")).items() if k in pre})
    return pre


def input_size(height: int, width: int, pre: dict) -> tuple[int, int]:
    """The (h, w) a view of ``height`` x ``width`` is resized to: aspect kept, covering the target size (as DPT's
    keep_aspect_ratio), each side a multiple of ``ensure_multiple_of``."""
    size = pre["size"]
    th, tw = (size.get("height", 518), size.get("width", 518)) if isinstance(size, dict) else (size, size)
    m = max(int(pre.get("ensure_multiple_of", 14)), 1)
    scale = max(th / height, tw / width)
    return max(m, round(height * scale / m) * m), max(m, round(width * scale / m) * m)


class DepthEstimator(torch.nn.Module):
    """A transformers depth model with its preprocessing: IMAGE views -> relative inverse depth (near = large)."""

    def __init__(self, model: torch.nn.Module, preprocessing: dict, relative: bool):
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing
        self.relative = relative  # False: the model predicts metric depth, inverted here
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Inverse depth float32 [B,H,W] on the model's device, of views [B,H,W,C] in 0..1 (first 3 channels).

        Resizing and normalisation run where ``images`` are; only the normalised batch moves to the model."""
        pre = self.preprocessing
        h, w = images.shape[1:3]
        param = next(self.model.parameters())
        x = images[..., :3].movedim(-1, 1).to(torch.float32)
        x = F.interpolate(x, size=input_size(h, w, pre), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(pre["image_mean"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(pre["image_std"], dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(device=param.device, dtype=param.dtype)
        pred = self.model(pixel_values=x).predicted_depth.float()
        pred = F.interpolate(pred[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        return pred if self.relative else 1.0 / pred.clamp_min(1e-6)


def load_estimator(folder: Path) -> DepthEstimator:
    """The estimator of a folder (see :func:`is_estimator_folder`), on the CPU, read offline from safetensors."""
    if not is_estimator_folder(folder):
        raise FileNotFoundError(f"depth estimator folder {folder}: no config.json and .safetensors model in it")
    from transformers import AutoModelForDepthEstimation  # heavy: only when an estimator is used

    model = AutoModelForDepthEstimation.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    relative = getattr(model.config, "depth_estimation_type", "relative") != "metric"
    return DepthEstimator(model, read_preprocessing(folder), relative)

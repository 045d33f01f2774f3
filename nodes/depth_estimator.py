"""Depth estimators in ComfyUI: the models/depth_estimators folder, and the estimator in use, placed on the device by
ComfyUI's model management (a ModelPatcher loaded with ``load_models_gpu``, which frees memory first)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths

from ..glimpse.depth_estimator import folder_stamp, is_estimator_folder, load_estimator

ESTIMATOR_FOLDER = "depth_estimators"
NO_ESTIMATOR = "none"
ESTIMATOR_BATCH = 4


def register_depth_estimator_folder() -> None:
    """Register ``models/depth_estimators`` with folder_paths: one sub-folder per estimator, holding a transformers
    depth model as ``*.safetensors`` + ``config.json`` (+ optional ``preprocessor_config.json``)."""
    folder_paths.add_model_folder_path(ESTIMATOR_FOLDER, os.path.join(folder_paths.models_dir, ESTIMATOR_FOLDER))


def estimator_names() -> list[str]:
    """Sub-folders of the depth_estimators folders that hold a safetensors model and a config.json."""
    if ESTIMATOR_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    names = set()
    for f in folder_paths.get_filename_list(ESTIMATOR_FOLDER):
        parent = os.path.dirname(f)
        if f.endswith(".safetensors") and parent and estimator_dir(parent) is not None:
            names.add(parent.replace(os.sep, "/"))
    return sorted(names)


def estimator_dir(name: str) -> Path | None:
    """The first depth_estimators folder that holds the estimator ``name``, or None."""
    for base in folder_paths.get_folder_paths(ESTIMATOR_FOLDER):
        if is_estimator_folder(Path(base) / name):
            return Path(base) / name
    return None


# The estimator in use. A core model reaches its node as a loader node's output, which ComfyUI's execution cache keeps;
# DepthControlNet chooses its estimator by name and loads it itself, so the one in use is kept here, as a ModelPatcher:
# model management decides when its weights are on the device and offloads them when another model needs the room.
_IN_USE: dict = {}


def estimator_patcher(name: str) -> comfy.model_patcher.ModelPatcher:
    """The ModelPatcher of the named estimator, read from its folder again when the folder's files changed."""
    folder = estimator_dir(name)
    if folder is None:
        raise FileNotFoundError(f"depth estimator {name!r}: no folder with config.json and a .safetensors model under "
                                f"{', '.join(folder_paths.get_folder_paths(ESTIMATOR_FOLDER))}")
    stamp = folder_stamp(folder)
    if _IN_USE.get("stamp") != stamp:
        _IN_USE.clear()  # the previous estimator goes before the next one is read
        offload = comfy.model_management.unet_offload_device()
        _IN_USE.update(stamp=stamp, patcher=comfy.model_patcher.ModelPatcher(
            load_estimator(folder).to(offload), load_device=comfy.model_management.get_torch_device(),
            offload_device=offload))
    return _IN_USE["patcher"]


def estimate_inverse_depth(name: str, images: torch.Tensor) -> torch.Tensor:
    """Relative inverse depth [N,H,W] (near = large) of IMAGE views [N,H,W,3], by the named estimator."""
    patcher = estimator_patcher(name)
    # Whole: a transformers model has none of the cast layers ComfyUI streams weights through in low-VRAM mode.
    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    n = images.shape[0]
    out = torch.empty(images.shape[:3], dtype=torch.float32)
    bar = comfy.utils.ProgressBar(n)
    for s in range(0, n, ESTIMATOR_BATCH):
        comfy.model_management.throw_exception_if_processing_interrupted()
        out[s:s + ESTIMATOR_BATCH] = patcher.model(images[s:s + ESTIMATOR_BATCH]).cpu()
        bar.update(min(ESTIMATOR_BATCH, n - s))
    return out

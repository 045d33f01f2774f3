"""SaveViewSet: the enhanced views, their confidences, cameras and an auditable manifest under ComfyUI's output
folder."""
from __future__ import annotations

import json
import logging
import os

import torch

import folder_paths
from comfy.cli_args import args
from comfy_api.latest import io, ui

from ..glimpse.files import sha256_file
from ..glimpse.output import save_view_set, workflow_facts
from ..glimpse.types import Cameras as CamerasValue
from .types import Cameras, CrossView

log = logging.getLogger(__name__)

OVERWRITE = {"new folder": "suffix", "refuse": "refuse"}
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, for hash_models


def _model_hash(path: str) -> str:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def describe_models(models: list[dict], hash_models: bool) -> list[dict]:
    """Resolve the prompt's model file names in ComfyUI's model folders: folder, size and (if asked) a short hash."""
    out = []
    for m in models:
        entry = dict(m)
        for folder in folder_paths.folder_names_and_paths:
            try:
                path = folder_paths.get_full_path(folder, m["name"])
            except Exception:  # some folders (custom nodes' registrations) reject odd names
                path = None
            if path:
                entry["folder"] = folder
                entry["size"] = os.path.getsize(path)
                if hash_models:
                    entry["sha256"] = _model_hash(path)[:12]
                break
        out.append(entry)
    return out


class SaveViewSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveViewSet",
            display_name="Save View Set",
            category="Glimpse",
            description="Writes the views as view_XX.png (RGBA with the mask as alpha; XX is each view's index in its "
                        "set), confidence_XX.png, optionally hint_XX.png, cameras.json and manifest.json (input "
                        "hashes, every parameter of the workflow, model files, seeds, scores) into a subfolder of "
                        "ComfyUI's output folder. Every file is written atomically. Existing results are never "
                        "overwritten: chunks of one set with different views share the folder, and a run that would "
                        "overwrite a view goes to '<subfolder>_001' (or fails, with overwrite 'refuse'). The PNGs "
                        "embed the prompt and workflow like core SaveImage.",
            inputs=[
                io.Image.Input("images", tooltip="The views to save (e.g. ConfidenceBlend images)."),
                io.String.Input("subfolder", default="glimpse",
                                tooltip="Folder inside ComfyUI's output folder; '..' and absolute paths are refused."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Render opacity per view, written as the PNGs' alpha (RGB without it)."),
                io.Mask.Input("confidence", optional=True,
                              tooltip="ConfidenceBlend confidence, written as confidence_XX.png."),
                Cameras.Input("cameras", optional=True,
                              tooltip="The views' cameras: written as cameras.json, and they name the files by each "
                                      "view's index in its set (view_07 stays view_07 in a chunk)."),
                io.Image.Input("hints", optional=True, tooltip="DepthControlNet hints, written when save_hints is on."),
                io.Boolean.Input("save_hints", default=False, tooltip="Also write the hints as hint_XX.png."),
                io.String.Input("scores", optional=True, force_input=True,
                                tooltip="ViewConsistency JSON, stored in the manifest."),
                CrossView.Input("cross_view", optional=True,
                                tooltip="Cross-View Attention's cross_view output: its mode, weight, anchors and "
                                        "each view's anchors go into the manifest."),
                io.Combo.Input("overwrite", options=list(OVERWRITE), default="new folder",
                               tooltip="When a view file already exists in the subfolder: write into the next free "
                                       "'<subfolder>_NNN' ('new folder') or fail ('refuse'). Never overwrites."),
                io.Boolean.Input("hash_models", default=False,
                                 tooltip="Record a short sha256 of every model file the workflow names (reads each "
                                         "file once per session; a few seconds per GB)."),
            ],
            outputs=[],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo, io.Hidden.unique_id],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, subfolder: str | None = None, **kwargs) -> bool | str:
        if subfolder is not None:
            from ..glimpse.output import resolve_subfolder

            try:
                resolve_subfolder(folder_paths.get_output_directory(), subfolder)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(cls, images: torch.Tensor, subfolder: str = "glimpse", mask: torch.Tensor | None = None,
                confidence: torch.Tensor | None = None, cameras: CamerasValue | None = None,
                hints: torch.Tensor | None = None, save_hints: bool = False, scores: str | None = None,
                cross_view: dict | None = None,
                overwrite: str = "new folder", hash_models: bool = False) -> io.NodeOutput:
        n = images.shape[0]
        if mask is not None and mask.dim() == 2:
            mask = mask[None]
        for what, t in (("mask", mask), ("confidence", confidence)):
            if t is not None and tuple(t.shape) != tuple(images.shape[:3]):
                raise ValueError(f"SaveViewSet: {what} is {list(t.shape)} but the images are "
                                 f"{list(images.shape[:3])} ([N,H,W])")
        if save_hints and hints is None:
            raise ValueError("SaveViewSet: save_hints is on but no hints are connected")
        if cameras is not None and len(cameras) != n:
            raise ValueError(f"SaveViewSet: {n} images but {len(cameras)} cameras")
        prompt = cls.hidden.prompt if cls.hidden is not None else None
        extra = cls.hidden.extra_pnginfo if cls.hidden is not None else None
        text = None
        if not args.disable_metadata:
            text = {}
            if prompt is not None:
                text["prompt"] = json.dumps(prompt)
            for key, value in (extra or {}).items():
                text[key] = json.dumps(value)
        parsed_scores = None
        if scores:
            try:
                parsed_scores = json.loads(scores)
            except ValueError:
                raise ValueError("SaveViewSet: scores is not JSON (connect ViewConsistency's scores)") from None
        facts = workflow_facts(prompt)
        manifest = {
            "node": {"subfolder": subfolder, "save_hints": save_hints, "overwrite": overwrite,
                     "hash_models": hash_models},
            "parameters": facts["parameters"],
            "models": describe_models(facts["models"], hash_models),
            "seed": facts["seeds"][0]["value"] if len(facts["seeds"]) == 1 else facts["seeds"] or None,
            "timing": None,  # per-view timing is not known inside a graph; the headless runner records its own
            "scores": parsed_scores,
            "cross_view": cross_view or {"mode": "off"},
        }
        root = folder_paths.get_output_directory()
        saved = save_view_set(root, subfolder, images, alpha=mask, confidence=confidence,
                              hints=hints if save_hints else None, cameras=cameras, png_text=text,
                              manifest=manifest, policy=OVERWRITE[overwrite])
        rel = os.path.relpath(saved.folder, os.path.realpath(root))
        rel = "" if rel == "." else rel.replace(os.sep, "/")
        log.info("SaveViewSet: %d views -> %s", n, saved.folder)
        results = [ui.SavedResult(name, rel, io.FolderType.output) for name in saved.images]
        results += [ui.SavedResult(name, rel, io.FolderType.output) for name in saved.files
                    if name.startswith(("confidence_", "hint_"))]
        return io.NodeOutput(ui=ui.SavedImages(results))

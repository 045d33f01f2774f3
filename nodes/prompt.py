"""GlimpsePrompt: template prompts for refining renders, encoded once, optionally one conditioning per view."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict

import torch

import folder_paths
from comfy_api.latest import io, ui

from ..glimpse.prompts import (
    BUILTIN_TEMPLATES,
    Template,
    compose,
    load_user_templates,
    resolve_template,
    stack_token_sequences,
    unique_in_order,
    view_directions,
)
from .types import Cameras

PROMPT_FOLDER = "glimpse_prompts"
NO_FILE = "none"


def register_prompt_folder() -> None:
    """Register ``models/glimpse_prompts`` (JSON user template files) with folder_paths; extra_model_paths.yaml may
    add more folders under the same name."""
    folder_paths.add_model_folder_path(PROMPT_FOLDER, os.path.join(folder_paths.models_dir, PROMPT_FOLDER))
    paths, _ = folder_paths.folder_names_and_paths[PROMPT_FOLDER]
    folder_paths.folder_names_and_paths[PROMPT_FOLDER] = (paths, {".json"})


def _template_files() -> list[str]:
    if PROMPT_FOLDER not in folder_paths.folder_names_and_paths:
        return []
    return folder_paths.get_filename_list(PROMPT_FOLDER)


def _user_file(name: str | None) -> str | None:
    """Full path of a user template file picked in the combo, or None for no file."""
    if not name or name == NO_FILE:
        return None
    path = folder_paths.get_full_path(PROMPT_FOLDER, name) if PROMPT_FOLDER in folder_paths.folder_names_and_paths \
        else None
    if path is None:
        raise FileNotFoundError(f"user template file {name!r} is not in the {PROMPT_FOLDER} model folder "
                                f"({', '.join(folder_paths.get_folder_paths(PROMPT_FOLDER)) or 'not registered'})")
    return path


def _user_template_names() -> list[str]:
    """Names defined by readable user template files, for the template dropdown; broken files are reported when
    selected, not here."""
    names = []
    for f in _template_files():
        try:
            names += [n for n in load_user_templates(folder_paths.get_full_path(PROMPT_FOLDER, f)) if n not in names]
        except (OSError, ValueError) as e:
            logging.debug("GlimpsePrompt: skipping %s in the template list: %s", f, e)
    return names


def _templates(user_templates: str | None) -> tuple[dict[str, Template] | None, str]:
    path = _user_file(user_templates)
    if path is None:
        return None, ""
    return load_user_templates(path), user_templates


# Recent encodings per CLIP object. LoadViewSet hands its cameras over in chunks, so ComfyUI runs this node once per
# chunk (and once per chunk prompt of the headless runner); without this memo every chunk re-encoded the same few
# texts (about 7 s each on CPU). Keyed weakly on the CLIP object: a patched CLIP is a clone, so it never hits an old
# entry, and a CLIP that ComfyUI drops takes its entries with it.
_ENCODED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_ENCODED_PER_CLIP = 16


def _encode(clip, text: str) -> list:
    memo = _ENCODED.setdefault(clip, OrderedDict())
    if text in memo:
        memo.move_to_end(text)
        return memo[text]
    cond = memo[text] = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    if len(memo) > _ENCODED_PER_CLIP:
        memo.popitem(last=False)
    return cond


def _batch(conds: list[list], index: list[int]) -> list:
    """One conditioning whose batch holds ``conds[index[i]]`` at position i (conds are core CONDITIONING lists)."""
    entries = {len(c) for c in conds}
    if len(entries) != 1:
        raise ValueError(f"per-view prompts encoded to different numbers of conditioning entries {sorted(entries)}; "
                         "scheduled CLIP hooks must be the same for every view")
    out = []
    for e in range(entries.pop()):
        parts = [conds[i][e] for i in index]
        extras = {}
        for key, value in parts[0][1].items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == 1:
                extras[key] = torch.cat([p[1][key] for p in parts])
            else:
                extras[key] = value
        out.append([stack_token_sequences([p[0] for p in parts]), extras])
    return out


class GlimpsePrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="GlimpsePrompt",
            display_name="Glimpse Prompt",
            category="Glimpse",
            description="Builds the positive and negative prompt for refining renders of a 3D object from a template "
                        "(built-in or from a JSON file in models/glimpse_prompts) and encodes each distinct text once. "
                        "With cameras connected, every view gets direction words (front view, side view, back view, "
                        "from above) and the conditionings are batched in view order.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP text encoder of the checkpoint used for refining."),
                io.Combo.Input(
                    "template", options=[*BUILTIN_TEMPLATES, *_user_template_names()], default="default",
                    tooltip="Prompt template: a positive prompt with a {subject} slot and a negative prompt. Names "
                            "from the selected user template file replace built-in ones of the same name."),
                io.String.Input(
                    "subject", default="",
                    tooltip="What the object is, e.g. 'a low-poly red fox'. Fills {subject}; may be empty."),
                io.String.Input(
                    "extra", default="", multiline=True,
                    tooltip="Text appended to the positive prompt (after the template and before direction words)."),
                io.Combo.Input(
                    "user_templates", options=[NO_FILE, *_template_files()], default=NO_FILE, optional=True,
                    tooltip='A UTF-8 JSON file in models/glimpse_prompts: {"templates": {"name": {"positive": '
                            '"{subject}, ...", "negative": "..."}}}. "none" uses the built-in templates only.'),
                Cameras.Input(
                    "cameras", optional=True,
                    tooltip="The view set's cameras. When connected, each view gets direction words from its azimuth "
                            "and elevation, and the outputs hold one conditioning per view, in view order."),
                io.Float.Input(
                    "front_azimuth", default=0.0, min=-360.0, max=360.0, step=0.5, optional=True,
                    tooltip="Azimuth in degrees of the camera that sees the object's front (0 for SyncDreamer's "
                            "view 0). Used only with cameras."),
            ],
            outputs=[
                io.Conditioning.Output(
                    "positive", display_name="positive",
                    tooltip="Encoded positive prompt; with cameras, a batch of one conditioning per view."),
                io.Conditioning.Output(
                    "negative", display_name="negative",
                    tooltip="Encoded negative prompt, encoded once (repeated to the view count with cameras)."),
                io.String.Output(
                    "positive_text", display_name="positive_text",
                    tooltip="The positive prompt text; with cameras, one line per view in view order."),
                io.String.Output("negative_text", display_name="negative_text", tooltip="The negative prompt text."),
            ],
        )

    @classmethod
    def validate_inputs(cls, template=None, user_templates=NO_FILE) -> bool | str:
        try:
            user, source = _templates(user_templates)
            if template is not None:
                resolve_template(template, user, source)
        except (OSError, ValueError) as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, user_templates=NO_FILE, **kwargs):
        try:
            path = _user_file(user_templates)
        except FileNotFoundError:
            return None
        if path is None:
            return ""
        stat = os.stat(path)
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, clip, template: str, subject: str, extra: str, user_templates: str = NO_FILE,
                cameras=None, front_azimuth: float = 0.0) -> io.NodeOutput:
        if clip is None:
            raise ValueError("GlimpsePrompt got no CLIP: the checkpoint loader's clip output is empty, so this "
                             "checkpoint has no text encoder")
        user, source = _templates(user_templates)
        chosen = resolve_template(template, user, source)
        positive_text, negative_text = compose(chosen, subject, extra)
        negative = _encode(clip, negative_text)
        if cameras is None:
            return io.NodeOutput(_encode(clip, positive_text), negative, positive_text, negative_text,
                                 ui=ui.PreviewText(positive_text))

        if len(cameras) == 0:
            raise ValueError("GlimpsePrompt got cameras for 0 views; connect a view set's cameras or none")
        directions = view_directions(cameras.azimuth_deg, cameras.elevation_deg, front_azimuth)
        texts = [compose(chosen, subject, extra, d)[0] for d in directions]
        distinct, index = unique_in_order(texts)
        positive = _batch([_encode(clip, t) for t in distinct], index)
        negative = _batch([negative], [0] * len(texts))
        positive_text = "\n".join(texts)
        return io.NodeOutput(positive, negative, positive_text, negative_text, ui=ui.PreviewText(positive_text))

"""Prompt templates for refining renders of a 3D object, user template files, and per-view direction words.

A template is a positive prompt with a ``{subject}`` slot and a negative prompt. Only the literal ``{subject}`` is
replaced; other braces are kept as written. A positive without the slot gets the subject in front of it. An empty
subject is allowed: the template then describes the render without naming the object.

User template files are UTF-8 JSON (a byte-order mark is accepted) in this schema::

    {
      "templates": {
        "my_style": {
          "positive": "{subject}, hand-painted texture, soft light",
          "negative": "blurry, noisy"
        }
      }
    }

``templates`` maps a name to an object with a string ``positive`` (required) and a string ``negative`` (optional,
empty when left out); no other keys are allowed, so a misspelt key is reported instead of ignored. A user template
named like a built-in one replaces it while that file is selected.

Direction words come from a camera's azimuth and elevation in degrees (world +z up, azimuth measured from +x toward
+y). ``front_azimuth_deg`` is the azimuth of the camera that looks at the object's front: 0 for SyncDreamer's 16-view
set, whose view 0 looks from +x at the front.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SUBJECT_SLOT = "{subject}"


@dataclass(frozen=True)
class Template:
    positive: str
    negative: str = ""


# Shared by every template: what an SDXL refiner of coarse 3D renders should avoid.
_NEGATIVE_COMMON = (
    "blurry, out of focus, low resolution, jpeg artifacts, noise, grainy, smudged details, distorted geometry, "
    "deformed, duplicate, cropped, text, watermark, signature"
)

BUILTIN_TEMPLATES: dict[str, Template] = {
    "default": Template(
        "{subject}, highly detailed 3D render, sharp focus, crisp clean edges, fine surface detail, "
        "consistent even lighting, plain background, high quality",
        _NEGATIVE_COMMON + ", low detail, washed out colors",
    ),
    "photorealistic": Template(
        "{subject}, professional photograph, photorealistic, physically accurate materials, detailed texture, "
        "sharp focus, soft studio lighting, natural colors, 8k",
        _NEGATIVE_COMMON + ", cartoon, illustration, painting, cgi look, plastic, oversaturated",
    ),
    "product": Template(
        "{subject}, studio product shot, clean seamless background, softbox lighting, crisp edges, "
        "precise materials and finish, commercial photography, high detail, sharp focus",
        _NEGATIVE_COMMON + ", clutter, busy background, harsh shadows, fingerprints, dust, logo",
    ),
    "character": Template(
        "{subject}, detailed 3D character, clean anatomy, detailed face and hands, detailed clothing, "
        "consistent proportions, sharp focus, soft even lighting, plain background",
        _NEGATIVE_COMMON + ", bad anatomy, extra limbs, extra fingers, fused fingers, asymmetric eyes, "
        "disfigured face",
    ),
    "environment": Template(
        "{subject}, detailed 3D environment, coherent geometry, straight architectural lines, realistic materials, "
        "global illumination, sharp focus throughout, wide depth of field",
        _NEGATIVE_COMMON + ", warped perspective, bent lines, floating objects, haze, fog, tilted horizon",
    ),
    "object": Template(
        "{subject}, single object, detailed 3D model, centered, clean silhouette, crisp surface detail, "
        "accurate materials, neutral studio lighting, plain background",
        _NEGATIVE_COMMON + ", multiple objects, clutter, background scenery, motion blur",
    ),
    "anime_style": Template(
        "{subject}, anime style, cel shading, clean line art, flat vibrant colors, sharp outlines, "
        "consistent character design, high quality illustration",
        _NEGATIVE_COMMON + ", photorealistic, realistic skin texture, sketchy lines, messy lines, 3d render look",
    ),
}

_REPEATED_COMMAS = re.compile(r"\s*,(\s*,)+\s*")
_SPACES = re.compile(r"[ \t]+")


def tidy(text: str) -> str:
    """Collapse runs of spaces and the empty comma-separated items an empty subject or extra leaves behind."""
    text = _SPACES.sub(" ", text)
    text = _REPEATED_COMMAS.sub(", ", text)
    return text.strip().strip(",").strip()


def fill(template_text: str, subject: str) -> str:
    """The template with ``{subject}`` replaced; a template without the slot gets a non-empty subject in front."""
    subject = subject.strip()
    if SUBJECT_SLOT in template_text:
        return tidy(template_text.replace(SUBJECT_SLOT, subject))
    return tidy(f"{subject}, {template_text}" if subject else template_text)


def join_prompt(*parts: str) -> str:
    """Comma-join the non-empty parts of a prompt."""
    return tidy(", ".join(p.strip() for p in parts if p and p.strip()))


def compose(template: Template, subject: str, extra: str = "", direction: str = "") -> tuple[str, str]:
    """(positive, negative): the filled positive, then ``extra``, then the view's direction words."""
    return join_prompt(fill(template.positive, subject), extra, direction), tidy(template.negative)


def parse_user_templates(data: bytes, source: str) -> dict[str, Template]:
    """Templates from the bytes of a user template file; every problem is a ValueError naming ``source``."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"user template file {source} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"user template file {source} is not valid JSON: {e.msg} at line {e.lineno} column "
                         f"{e.colno}") \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("templates"), dict):
        raise ValueError(
            f'user template file {source} must hold a JSON object with a "templates" object, '
            'e.g. {"templates": {"my_style": {"positive": "{subject}, ...", "negative": "..."}}}'
        )
    extra_keys = sorted(set(doc) - {"templates"})
    if extra_keys:
        raise ValueError(f"user template file {source} has unknown top-level keys {extra_keys}; only \"templates\"")
    if not doc["templates"]:
        raise ValueError(f"user template file {source} defines no templates")
    out = {}
    for name, entry in doc["templates"].items():
        where = f"user template file {source}, template {name!r}"
        if not name.strip():
            raise ValueError(f"user template file {source} has a template with an empty name")
        if not isinstance(entry, dict):
            raise ValueError(f'{where} must be an object with "positive" and "negative" strings, '
                             f"not {_json_type(entry)}")
        unknown = sorted(set(entry) - {"positive", "negative"})
        if unknown:
            raise ValueError(f'{where} has unknown keys {unknown}; allowed are "positive" and "negative"')
        if "positive" not in entry:
            raise ValueError(f'{where} has no "positive" prompt')
        for key in ("positive", "negative"):
            if key in entry and not isinstance(entry[key], str):
                raise ValueError(f'{where}: "{key}" must be a string, not {_json_type(entry[key])}')
        out[name] = Template(entry["positive"], entry.get("negative", ""))
    return out


def load_user_templates(path: str | Path) -> dict[str, Template]:
    """Read and parse a user template file (see the module docstring for the schema)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"user template file {path} does not exist") from None
    except OSError as e:
        raise ValueError(f"user template file {path} cannot be read: {e.strerror}") from None
    return parse_user_templates(data, str(path))


def resolve_template(name: str, user: dict[str, Template] | None = None, source: str = "") -> Template:
    """The template called ``name``: a user template first, then a built-in one."""
    if user and name in user:
        return user[name]
    if name in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name]
    known = f"built-in: {', '.join(BUILTIN_TEMPLATES)}"
    if user:
        known += f"; from {source or 'the user template file'}: {', '.join(user)}"
    raise ValueError(f"unknown prompt template {name!r} ({known})")


def view_direction(azimuth_deg: float, elevation_deg: float, front_azimuth_deg: float = 0.0,
                   above_deg: float = 45.0) -> str:
    """Direction words for one camera: "front view" within 45 degrees of the front azimuth (inclusive), "back view"
    within 45 degrees of the opposite side (inclusive), "side view" between; ", from above" / ", from below" is added
    at an elevation of at least ``above_deg`` up / down."""
    offset = abs(round((azimuth_deg - front_azimuth_deg + 180.0) % 360.0 - 180.0, 6))
    words = "front view" if offset <= 45.0 else "back view" if offset >= 135.0 else "side view"
    if elevation_deg >= above_deg:
        words += ", from above"
    elif elevation_deg <= -above_deg:
        words += ", from below"
    return words


def view_directions(azimuth_deg: Sequence[float] | torch.Tensor, elevation_deg: Sequence[float] | torch.Tensor,
                    front_azimuth_deg: float = 0.0, above_deg: float = 45.0) -> list[str]:
    """Direction words per view, in view order."""
    az = [float(a) for a in azimuth_deg]
    el = [float(e) for e in elevation_deg]
    if len(az) != len(el):
        raise ValueError(f"cameras have {len(az)} azimuths but {len(el)} elevations")
    return [view_direction(a, e, front_azimuth_deg, above_deg) for a, e in zip(az, el)]


def unique_in_order(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """(distinct texts in first-seen order, index into them for every input text)."""
    distinct: dict[str, int] = {}
    index = [distinct.setdefault(t, len(distinct)) for t in texts]
    return list(distinct), index


def stack_token_sequences(seqs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate [B,T,C] cross-attention sequences along the batch, repeating each along T to the least common
    multiple of their lengths (prompts over 77 tokens are longer). Repeating every key and value the same number of
    times leaves cross-attention's result unchanged, so each view keeps exactly its own conditioning."""
    length = math.lcm(*(s.shape[1] for s in seqs))
    return torch.cat([s.repeat(1, length // s.shape[1], 1) for s in seqs])


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")

"""How ComfyUI's frontend (1.27) turns a node definition from ``/object_info`` into sockets and widgets.

A canvas node keeps its widget values as a positional list. Which input each entry belongs to follows the node
definition exactly as the frontend builds widgets: inputs in ``input_order`` (required, then optional); an input is a
widget when its type is INT, FLOAT, STRING, BOOLEAN, COMBO or an option list (and not ``forceInput``); an INT with
``control_after_generate`` (or, when that is unset, an INT named ``seed`` / ``noise_seed``) and a COMBO with
``control_after_generate`` are followed by their control value ("fixed", "randomize" ...), and a COMBO with
``image_upload`` (video/audio/animated) by its upload button's value; neither extra entry is sent to the server.
"""
from __future__ import annotations

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
CONTROL_DEFAULT = "fixed"  # seeds in bundled workflows stay put when queued from the canvas


def inputs_in_order(spec: dict) -> list[tuple[str, list, bool]]:
    """[(name, [type, options], optional)] of a node definition, in ``input_order`` (required, then optional)."""
    defs = spec.get("input", {})
    order = spec.get("input_order") or {k: list(defs.get(k, {})) for k in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            entry = defs.get(section, {}).get(name)
            if entry is None:
                continue
            entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
            if len(entry) < 2 or not isinstance(entry[1], dict):
                entry = [entry[0], {}]
            out.append((name, entry, section == "optional"))
    return out


def is_widget(entry: list) -> bool:
    """Whether an input ``[type, options]`` is a widget on the canvas (else a socket)."""
    kind, opts = entry[0], entry[1]
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def type_name(entry: list) -> str:
    """The socket type of an input ``[type, options]`` (an option list is a COMBO)."""
    return "COMBO" if isinstance(entry[0], list) else str(entry[0])


def widget_slots(spec: dict) -> list[str | None]:
    """The meaning of each ``widgets_values`` entry of a node: an input name, or None for a control/upload entry."""
    slots: list[str | None] = []
    for name, entry, _ in inputs_in_order(spec):
        if not is_widget(entry):
            continue
        slots.append(name)
        kind, opts = type_name(entry), entry[1]
        control = opts.get("control_after_generate")
        if kind == "INT" and (control if control is not None else name in ("seed", "noise_seed")):
            slots.append(None)
        elif kind == "COMBO" and (control or any(opts.get(k) for k in UPLOAD_OPTIONS)):
            slots.append(None)
    return slots


def extra_entry(spec_entry: list) -> object:
    """The value stored after a widget with a control or upload button (see :func:`widget_slots`)."""
    opts = spec_entry[1]
    for key, value in (("image_upload", "image"), ("video_upload", "video"), ("audio_upload", "audio"),
                       ("animated_image_upload", "image")):
        if opts.get(key) and not opts.get("control_after_generate"):
            return value
    return CONTROL_DEFAULT


def default_value(entry: list):
    """A widget's value when nothing sets it: its default, else the first option of a combo, else 0/""/False."""
    kind, opts = entry[0], entry[1]
    if "default" in opts:
        return opts["default"]
    options = kind if isinstance(kind, list) else opts.get("options")
    if options is not None:
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)

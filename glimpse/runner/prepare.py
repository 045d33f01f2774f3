"""Everything a run decides before any server starts: the workflow and the user's overrides, each set's local scan,
the output folders, and which views are still to do (see step 1 of :mod:`glimpse.runner.run`).

Every problem found here is bad input (exit status 2) and nothing has been written when it is reported, except the
output folders and manifests of a run that then goes ahead.
"""
from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..crossview.anchors import ANCHORS_WHEN_ABSENT, DEFAULT_ANCHOR_COUNT, parse_anchors
from ..files import files_digest
from ..presets import CROSS_VIEW_FIELDS_ABSENT, PRESETS
from ..scan import transparent_views
from ..views import view_name
from . import manifest as mf
from .pool import SetJob
from .viewset import check_set, find_viewsets
from .workflow import MEMORY_PRESET, apply_overrides, load_workflow, resolve_workflow, workflow_mode

DEFAULT_CHUNK = 4
CROSS_VIEW = "GlimpseCrossViewAttention"
USER_OPTIONS = ("preset", "steps", "strength", "seed", "cross_view", "subject", "template", "resolution",
                "save_hints")


class RunError(RuntimeError):
    """A failure that ends the run; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


@dataclass
class RunOptions:
    viewset: Path
    out: Path
    servers: list[str] = field(default_factory=list)
    workflow: str | None = None
    overrides: dict = field(default_factory=dict)  # USER_OPTIONS -> value or None
    chunk: int | None = None
    models_dir: Path | None = None
    cpu: bool | None = None
    comfy_args: list[str] = field(default_factory=list)
    stream: object = None
    tty: bool | None = None
    stop: threading.Event | None = None  # set from another thread: stops the run as Ctrl-C does (exit 130)


@dataclass
class Plan:
    workflow_path: Path
    mode: str  # "set" or "per-view"
    applied: list[str]  # the overrides, as applied
    chunk: int  # views per prompt
    jobs: list[SetJob]
    notes: list[str]  # warnings to show when the run starts


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".glimpse-write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise RunError(f"output folder {folder} is not writable ({e.strerror or e})", 2) from None


def check_apart(folder: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the view set, lies inside it, or holds it: the outputs would overwrite or mix
    with the set's own files (its renders are named view_XX.png too)."""
    a, b = folder.resolve(), out_dir.resolve()
    if a == b or a in b.parents or b in a.parents:
        where = "is" if a == b else "lies inside" if a in b.parents else "holds"
        raise RunError(f"output folder {out_dir} {where} the view set {folder}: its outputs (view_XX.png, "
                       "manifest.json) would overwrite or mix with the set's own files; choose an output folder "
                       "outside the set", 2)


def preset_chunk(workflow: dict) -> int:
    """Views per prompt: the workflow's MemoryPreset views_per_chunk (named preset or custom field), else 4."""
    for n in workflow.values():
        if n["class_type"] == MEMORY_PRESET:
            inputs = n["inputs"]
            named = PRESETS.get(inputs.get("preset"))
            if inputs.get("preset") == "custom" and isinstance(inputs.get("views_per_chunk"), int):
                return inputs["views_per_chunk"]
            if named is not None:
                return named.views_per_chunk
    return DEFAULT_CHUNK


def _linked_preset(workflow: dict, inputs: dict):
    """The Settings of the MemoryPreset wired into ``inputs['settings']``, or None."""
    link = inputs.get("settings")
    node = workflow.get(str(link[0])) if isinstance(link, list) else None
    if node is None or node["class_type"] != MEMORY_PRESET:
        return None
    fields = node["inputs"]
    if fields.get("preset") != "custom":
        return PRESETS.get(fields.get("preset"))
    custom = {k: fields.get(k, CROSS_VIEW_FIELDS_ABSENT[k]) for k in ("cross_view", "anchor_count")
              if not isinstance(fields.get(k), list)}
    return replace(PRESETS["custom"], **custom)


def cross_view_anchors(workflow: dict, spec) -> list[int]:
    """The anchor views LoadViewSet puts first when the workflow's cross-view attention is on, else [].

    Read as the nodes read them: CrossViewAttention's mode and weight (the connected preset's cross_view wins), and
    LoadViewSet's anchors and anchor_count (the connected preset's count wins; a preset with cross_view off means
    none), with the set's own cameras, so the runner and LoadViewSet pick the same views.
    """
    attention = [n["inputs"] for n in workflow.values() if n["class_type"] == CROSS_VIEW]
    load = [n["inputs"] for n in workflow.values() if n["class_type"] == "LoadViewSet"]
    if not attention or not load or spec.cameras is None:
        return []
    settings = _linked_preset(workflow, attention[0])
    mode = settings.cross_view if settings is not None else attention[0].get("mode")
    if mode == "off" or attention[0].get("weight") == 0:
        return []
    count = load[0].get("anchor_count", DEFAULT_ANCHOR_COUNT)
    text = load[0].get("anchors", ANCHORS_WHEN_ABSENT)
    settings = _linked_preset(workflow, load[0])
    if settings is not None:
        count, text = settings.anchor_count, text if settings.cross_view != "off" else "none"
    return parse_anchors(text, spec.cameras.world_to_camera, count)


def prepare(o: RunOptions) -> Plan:
    """The run's plan; RunError (exit 2) naming the file or option on bad input."""
    try:
        workflow_path = resolve_workflow(o.workflow)
        base = load_workflow(workflow_path)
        mode = workflow_mode(base)
        user = {k: o.overrides.get(k) for k in USER_OPTIONS}
        wf, applied = apply_overrides(base, user, str(workflow_path))
        probe = ({"path": "x", "views": "0", "subfolder": "x"} if mode == "set"
                 else {"image": "x", "filename_prefix": "x"})
        apply_overrides(wf, probe, str(workflow_path))
        sets = find_viewsets(Path(o.viewset))
        specs = [check_set(folder, images_only=mode == "per-view") for folder in sets]
        transparent = [transparent_views(spec) for spec in specs]  # decodes the views: pixel data that fails too
        hashes = [files_digest(spec.files(), contents=True) for spec in specs]
    except (ValueError, OSError) as e:  # WorkflowError, OverrideError, ViewSetError, undecodable or unreadable files
        raise RunError(str(e), 2) from None
    if o.chunk is not None and o.chunk < 1:
        raise RunError(f"--chunk must be at least 1, got {o.chunk}", 2)
    out = Path(o.out)
    out_dirs = [out if len(sets) == 1 else out / folder.name for folder in sets]
    for folder in sets:  # before anything is written
        for out_dir in out_dirs:
            check_apart(folder, out_dir)
    check_writable(out)
    jobs, notes = [], []
    for folder, spec, out_dir, empty, inputs_hash in zip(sets, specs, out_dirs, transparent, hashes):
        check_writable(out_dir)
        if empty:
            notes.append(f"warning: {folder}: {', '.join(map(view_name, empty))} fully transparent (alpha 0 "
                         "everywhere): nothing of them is enhanced or scored")
        views = [v.index for v in spec.views]
        params = mf.params_hash(base, user, inputs_hash)
        m = mf.new(mf.load(out_dir), params, viewset=str(folder.resolve()), inputs_hash=inputs_hash,
                   workflow=str(workflow_path), overrides=user, views=views, out_dir=out_dir)
        mf.save(m, out_dir)
        try:
            anchors = cross_view_anchors(wf, spec) if mode == "set" else []
        except ValueError as e:
            raise RunError(f"{folder}: {e}", 2) from None
        jobs.append(SetJob(folder.name, folder, out_dir, spec.files(), inputs_hash, views, params, m, wf, spec,
                           anchors))
    chunk = 1 if mode == "per-view" else o.chunk or preset_chunk(wf)
    return Plan(workflow_path, mode, applied, chunk, jobs, notes)

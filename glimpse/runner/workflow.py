"""API workflows: finding them, telling them from canvas files, and applying the runner's overrides.

Every value the runner changes in a workflow is found by node ``class_type`` and input name, through the single table
``OVERRIDES`` below, never by node id: the bundled workflows and a user's own export can number their nodes freely.
An override whose node or input is missing (or whose input is wired to another node) is reported by name instead of
being dropped silently; ``apply_overrides`` raises ``OverrideError`` listing every such option.

Two workflow shapes are run:

* **set** workflows hold a ``LoadViewSet`` node: one prompt per chunk of views, the chunk given as LoadViewSet's
  ``views`` selection ("4-7"), the outputs written by ``SaveViewSet`` as ``view_XX.png`` / ``confidence_XX.png`` /
  ``hint_XX.png`` named by the original view index.
* **per-view** workflows are any plain image workflow with one ``LoadImage`` and a ``SaveImage`` (for instance a
  core img2img graph): one prompt per view, LoadImage gets ``<input subfolder>/view_XX.png`` and SaveImage the
  prefix ``<output subfolder>/view_XX``; ComfyUI's ``_00001_`` counter is dropped when the files are collected.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..lightning import check_steps, check_strength
from ..presets import PRESET_NAMES, PRESETS

DEFAULT_WORKFLOW = "t4"
MAX_RESOLUTION = 8192  # LoadViewSet's resolution input: 0 (native) or a multiple of 64 up to this


@dataclass(frozen=True)
class Override:
    """One runner option and the (class_type, input) pairs it sets.

    ``every=False``: the first target class present in the workflow gets the value (on every node of that class).
    ``every=True``: every target present gets it (an option that has to reach two places to take effect).
    ``convert``: the type the input takes (the step counts are combo strings).
    ``unwire``: inputs of the target node that would override the value (a GLIMPSE_SETTINGS link): removed.
    """

    option: str
    targets: tuple[tuple[str, str], ...]
    help: str
    every: bool = False
    convert: type | None = None
    unwire: tuple[str, ...] = ()


MEMORY_PRESET = "MemoryPreset"
# The one table of what the runner may change in a workflow (node ids as the pack registers them).
# LightningLoader's strength is ignored when GLIMPSE_SETTINGS are wired in, and a named MemoryPreset ignores its own
# fields, so --strength also goes to MemoryPreset, which the runner then turns into preset "custom" holding the named
# preset's values plus the override (see ``_customise_presets``). --resolution goes to LoadViewSet only, whose settings
# link is removed (connected settings would win over it), so the preset's other fields stay untouched; LoadViewSet
# then uses its own views_per_chunk, which the bundled workflows keep equal to the preset's.
OVERRIDES: tuple[Override, ...] = (
    Override("path", (("LoadViewSet", "path"),), "view set folder, relative to ComfyUI's input folder"),
    Override("views", (("LoadViewSet", "views"),), "selection of views for one chunk, e.g. 4-7"),
    Override("preset", ((MEMORY_PRESET, "preset"),), "memory/speed preset"),
    Override("steps", (("LightningLoader", "steps"), (MEMORY_PRESET, "steps")),
             "Lightning step count (LightningLoader's widget wins over the preset)", convert=str),
    Override("strength", (("LightningLoader", "strength"), (MEMORY_PRESET, "strength")), "img2img strength",
             every=True),
    Override("seed", (("GlimpseViewNoise", "noise_seed"), ("KSamplerAdvanced", "noise_seed"),
                      ("RandomNoise", "noise_seed"), ("KSampler", "seed")),
             "noise seed shared by every view"),
    Override("cross_view", (("GlimpseCrossViewAttention", "mode"), (MEMORY_PRESET, "cross_view")),
             "cross-view attention mode", every=True),
    Override("subject", (("GlimpsePrompt", "subject"),), "prompt subject"),
    Override("template", (("GlimpsePrompt", "template"),), "prompt template"),
    Override("resolution", (("LoadViewSet", "resolution"),), "working resolution (long side, px)",
             unwire=("settings",)),
    Override("subfolder", (("SaveViewSet", "subfolder"),), "output subfolder of SaveViewSet"),
    Override("save_hints", (("SaveViewSet", "save_hints"),), "also save the depth hints"),
    # per-view workflows (plain image graphs run once per view)
    Override("image", (("LoadImage", "image"),), "input image of a per-view workflow"),
    Override("filename_prefix", (("SaveImage", "filename_prefix"),), "output prefix of a per-view workflow"),
)
OVERRIDE_BY_OPTION = {o.option: o for o in OVERRIDES}


class WorkflowError(ValueError):
    """A workflow file that cannot be used (missing, not JSON, canvas format, no loader node)."""


class OverrideError(ValueError):
    """Overrides that could not be applied; ``problems`` maps option -> reason."""

    def __init__(self, problems: dict[str, str], source: str = "workflow"):
        self.problems = problems
        lines = [f"  --{k.replace('_', '-')}: {v}" for k, v in problems.items()]
        super().__init__(f"{source}: {len(problems)} override(s) could not be applied:\n" + "\n".join(lines))


def workflow_dirs() -> list[Path]:
    """Where bundled API workflows are looked up: $GLIMPSE_WORKFLOWS, the checkout's workflows/api, then the pack
    installed in ComfyUI ($COMFYUI_PATH or ~/ComfyUI, custom_nodes/glimpse-enhance/workflows/api)."""
    dirs = []
    if os.environ.get("GLIMPSE_WORKFLOWS"):
        dirs.append(Path(os.environ["GLIMPSE_WORKFLOWS"]))
    dirs.append(Path(__file__).resolve().parents[2] / "workflows" / "api")
    comfy = Path(os.environ.get("COMFYUI_PATH") or "~/ComfyUI").expanduser()
    dirs.append(comfy / "custom_nodes" / "glimpse-enhance" / "workflows" / "api")
    return dirs


def resolve_workflow(name_or_file: str | None) -> Path:
    """A FILE path as given, else NAME -> ``glimpse_enhance_<NAME>.json`` in ``workflow_dirs()``."""
    name = name_or_file or DEFAULT_WORKFLOW
    p = Path(name).expanduser()
    if p.suffix == ".json" or os.sep in name or p.is_file():
        if not p.is_file():
            raise WorkflowError(f"workflow file {p} does not exist")
        return p
    tried = []
    for d in workflow_dirs():
        cand = d / f"glimpse_enhance_{name}.json"
        if cand.is_file():
            return cand
        tried.append(str(cand))
    raise WorkflowError(f"no bundled workflow named '{name}' (looked for {', '.join(tried)}); pass a .json file path")


def load_workflow(path: Path) -> dict:
    """Read an API-format workflow; a canvas (UI) file or anything else gets a WorkflowError naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WorkflowError(f"workflow {path} is not valid JSON: {e}") from None
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {path}: {e.strerror}") from None
    if isinstance(data, dict) and ("nodes" in data and "links" in data):
        raise WorkflowError(
            f"workflow {path} is in ComfyUI's canvas (UI) format (top-level 'nodes'/'links'); the runner needs the API "
            "format: in ComfyUI use Workflow > Export (API), or take the twin in workflows/api/")
    if not isinstance(data, dict) or not data:
        raise WorkflowError(f"workflow {path} is not an API-format workflow (expected an object of node id -> node)")
    for nid, node in data.items():
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            raise WorkflowError(
                f"workflow {path} is not in API format: node '{nid}' has no class_type/inputs (expected "
                "{\"<id>\": {\"class_type\": ..., \"inputs\": {...}}})")
    return data


def workflow_mode(workflow: dict) -> str:
    """'set' (LoadViewSet present), 'per-view' (one LoadImage + SaveImage), else WorkflowError."""
    classes = [n["class_type"] for n in workflow.values()]
    if "LoadViewSet" in classes:
        return "set"
    if classes.count("LoadImage") == 1 and "SaveImage" in classes:
        return "per-view"
    if classes.count("LoadImage") > 1:
        raise WorkflowError("workflow has several LoadImage nodes and no LoadViewSet: the runner cannot tell which "
                            "one takes the view")
    raise WorkflowError("workflow has neither a LoadViewSet node nor a LoadImage -> SaveImage pair: nothing to feed "
                        "the view set into")


def _targets(workflow: dict, override: Override) -> list[tuple[list[str], str, str]] | str:
    """[(node ids, class, input)] to set for ``override``, or the reason it cannot be applied anywhere."""
    found, reasons = [], []
    for class_type, input_name in override.targets:
        ids = [nid for nid, n in workflow.items() if n["class_type"] == class_type]
        if not ids:
            reasons.append(f"no {class_type} node")
            continue
        missing = [nid for nid in ids if input_name not in workflow[nid]["inputs"]]
        if missing:
            reasons.append(f"{class_type} node {missing[0]} has no input '{input_name}'")
            continue
        linked = [nid for nid in ids if isinstance(workflow[nid]["inputs"][input_name], list)]
        if linked:
            src = workflow[linked[0]]["inputs"][input_name][0]
            reasons.append(f"{class_type} node {linked[0]} input '{input_name}' is wired to node {src}")
            continue
        found.append((ids, class_type, input_name))
        if not override.every:
            break
    return found or "; ".join(reasons)


def value_problem(option: str, value, workflow: dict) -> str | None:
    """Why the user's ``value`` for ``option`` would be refused by the server's nodes, or None; checked here, before
    any server starts. A prompt template is checked when no user template file is selected in the workflow (names
    from such a file are known only to the server)."""
    try:
        if option == "preset" and value not in PRESET_NAMES:
            return f"{value!r} is not a preset; expected one of {', '.join(PRESET_NAMES)}"
        if option == "steps":
            check_steps(value)
        if option == "strength":
            check_strength(value)
        if option == "resolution" and (value % 64 or not 0 <= value <= MAX_RESOLUTION):
            return f"{value} is not 0 (native size) nor a multiple of 64 up to {MAX_RESOLUTION}"
        if option == "template":
            files = {n["inputs"].get("user_templates", "none") for n in workflow.values()
                     if n["class_type"] == "GlimpsePrompt"}
            if files <= {"none"}:
                from ..prompts import resolve_template  # torch: imported only for this check

                resolve_template(value)
    except ValueError as e:
        return str(e)
    return None


def _customise_presets(workflow: dict, overridden_fields: dict[str, set[str]], applied: list[str]) -> None:
    """A named MemoryPreset whose own fields were overridden becomes ``custom`` with the named preset's values."""
    for nid, overridden in sorted(overridden_fields.items()):
        inputs = workflow[nid]["inputs"]
        named = PRESETS.get(inputs.get("preset"))
        if named is None or inputs.get("preset") == "custom":
            continue
        for field_name, value in vars(named).items():
            if field_name in inputs and field_name not in overridden and field_name != "preset":
                inputs[field_name] = str(value) if field_name == "steps" else value
        applied.append(f"{MEMORY_PRESET}.preset = 'custom' (node {nid}): preset {named.preset}'s values with "
                       f"{', '.join(sorted(overridden))} overridden")
        inputs["preset"] = "custom"


def apply_overrides(workflow: dict, values: dict, source: str = "workflow") -> tuple[dict, list[str]]:
    """A copy of ``workflow`` with every non-None ``values[option]`` set; returns (workflow, applied descriptions).

    Raises OverrideError naming each option whose node/input is absent or whose value the nodes would refuse
    (:func:`value_problem`), and KeyError for an unknown option.
    """
    out = copy.deepcopy(workflow)
    applied, problems, presets = [], {}, {}
    for option, value in values.items():
        if value is None:
            continue
        override = OVERRIDE_BY_OPTION[option]
        targets = _targets(out, override)
        if isinstance(targets, str):
            problems[option] = targets
            continue
        problem = value_problem(option, value, out)
        if problem:
            problems[option] = problem
            continue
        if override.convert is not None:
            value = override.convert(value)
        for ids, class_type, input_name in targets:
            for nid in ids:
                out[nid]["inputs"][input_name] = value
                for name in override.unwire:
                    if isinstance(out[nid]["inputs"].get(name), list):
                        del out[nid]["inputs"][name]
                        applied.append(f"{class_type}.{name} unwired (node {nid}) so that {input_name} applies")
                if class_type == MEMORY_PRESET and input_name != "preset":
                    presets.setdefault(nid, set()).add(input_name)
            applied.append(f"{class_type}.{input_name} = {value!r} (node {', '.join(ids)})")
    _customise_presets(out, presets, applied)
    if problems:
        raise OverrideError(problems, source)
    return out, applied


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)

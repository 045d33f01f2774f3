"""SDXL-Lightning img2img on the distilled grid: the strength-to-steps rule, the grid itself, and file-name facts.

An N-step Lightning model was distilled on the timesteps of ComfyUI's ``sgm_uniform`` scheduler with N steps. Img2img
with strength s must stay on that grid: it runs the *last* ``executed = max(1, round_half_up(N * s))`` of the N steps,
i.e. it skips the first ``k = N - executed``. In KSamplerAdvanced terms that is ``steps=N, start_at_step=k,
end_at_step=N`` (add_noise enabled, euler, sgm_uniform, cfg 1.0); with SamplerCustomAdvanced it is the N-step
sgm_uniform sigmas sliced ``[k:]`` (``executed + 1`` values ending in 0). KSampler's ``denoise`` is never used: it
builds a longer schedule and keeps its tail, which moves the timesteps off the grid the model was trained on.

The grid (restated in ``tests/fixtures/sigmas.py`` and checked there against ComfyUI) is what ComfyUI's ``sgm_uniform``
computes from a discrete model's sigma table: timesteps ``linspace(t(sigma_max), t(sigma_min), N + 1)[:-1]`` (999,
749.25, 499.5, 249.75 for N=4 on a 1000-step table), each turned into a sigma by linear interpolation of log-sigma
between the two neighbouring table entries, then a final 0. ByteDance's reference ("trailing" spacing) uses the integer
timesteps 999, 749, 499, 249; the fractional offset changes sigma by well under 1 % and ComfyUI's scheduler is what
users run, so ComfyUI's grid is the reference here. The node itself asks ComfyUI for the sigmas; this module holds the
rule (plain Python: the runner checks ``--steps`` with it without importing torch).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

LIGHTNING_STEPS = (1, 2, 4, 8)

_STEPS_IN_NAME = re.compile(r"(?<![0-9])([0-9]+)[ _-]?steps?(?![a-z])", re.IGNORECASE)
_X0_IN_NAME = re.compile(r"(?:^|[^a-z0-9])x0(?:[^a-z0-9]|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Img2ImgPlan:
    """Where an img2img pass sits on the N-step grid.

    ``steps`` is N (the distilled step count, KSamplerAdvanced ``steps``), ``start_at_step`` is k (KSamplerAdvanced
    ``start_at_step``; ``end_at_step`` is N), ``executed`` = N - k model evaluations per view (always >= 1).
    """

    steps: int
    start_at_step: int
    executed: int
    strength: float


def check_strength(strength: float) -> float:
    """Return ``strength`` as a float, or raise ValueError unless 0 < strength <= 1."""
    s = float(strength)
    if math.isnan(s) or not 0.0 < s <= 1.0:
        raise ValueError(f"strength {strength} is outside (0, 1]: it is the share of the Lightning grid steps to redo "
                         "(1 = redo the whole render, 0.25 = only the last quarter of the steps)")
    return s


def check_steps(steps: int) -> int:
    """Return ``steps`` as an int, or raise ValueError unless it is a released Lightning step count (1, 2, 4, 8)."""
    n = int(steps)
    if n != steps or n not in LIGHTNING_STEPS:
        raise ValueError(f"steps {steps} is not an SDXL-Lightning step count; expected one of {list(LIGHTNING_STEPS)}")
    return n


def executed_steps(steps: int, strength: float) -> int:
    """How many of the N grid steps strength s runs: ``max(1, round_half_up(N * s))``.

    Half-up rounding (not Python's banker's ``round``) so that N=2, s=0.75 runs 2 steps and N=4, s=0.625 runs 3; the
    max(1, ...) guarantees that no strength in (0, 1] produces a zero-step (no-op) pass.
    """
    n = check_steps(steps)
    s = check_strength(strength)
    return max(1, min(n, math.floor(n * s + 0.5)))


def plan_img2img(steps: int, strength: float) -> Img2ImgPlan:
    """The grid position of an img2img pass with an N-step model at strength s (see the module docstring)."""
    n = check_steps(steps)
    executed = executed_steps(n, strength)
    return Img2ImgPlan(steps=n, start_at_step=n - executed, executed=executed, strength=float(strength))


def steps_from_name(filename: str) -> int | None:
    """The step count a Lightning file name states (``sdxl_lightning_4step_lora.safetensors`` -> 4), or None.

    Reads the base name only; accepts ``4step``, ``4steps``, ``4-step``, ``4_steps`` (any case). A stated count that is
    not 1/2/4/8 is returned as is, so that :func:`resolve_steps` can reject it with the file named.
    """
    base = re.split(r"[\\/]", filename)[-1]
    found = {int(m.group(1)) for m in _STEPS_IN_NAME.finditer(base)}
    if len(found) == 1:
        return found.pop()
    return None


def is_x0_name(filename: str) -> bool:
    """True when the file name marks an x0-prediction distillation (``sdxl_lightning_1step_unet_x0.safetensors``)."""
    return _X0_IN_NAME.search(re.split(r"[\\/]", filename)[-1]) is not None


def resolve_steps(filename: str | None, requested: int | None, source: str = "steps") -> int:
    """The step count to use for ``filename``: ``requested`` if given (checked against the name), else the name's.

    ``requested`` None means "auto" (infer from the name). Raises ValueError naming the file when the name states a
    count that contradicts ``requested``, when the name states a count that is not 1/2/4/8, or when nothing says.
    ``source`` names where ``requested`` came from in the message (e.g. "steps" or "preset t4_balanced").
    """
    named = steps_from_name(filename) if filename else None
    if named is not None and named not in LIGHTNING_STEPS:
        raise ValueError(f"{filename} says {named} steps, which is not an SDXL-Lightning step count "
                         f"({list(LIGHTNING_STEPS)})")
    if requested is None:
        if named is None:
            what = filename or "the checkpoint"
            raise ValueError(f"cannot tell the Lightning step count of {what} from its name; choose steps 1, 2, 4 or 8")
        return named
    n = check_steps(requested)
    if named is not None and named != n:
        raise ValueError(f"{source} {n} contradicts {filename}, a {named}-step Lightning file: an N-step distillation "
                         f"only works on its own N-step grid; set steps to {named} (or auto), or load the {n}-step "
                         "file")
    return n


def sampling_for(filename: str | None, steps: int) -> str:
    """The ModelSamplingDiscrete ``sampling`` a Lightning file needs: ``"x0"`` or ``"eps"``.

    x0 when the name says ``x0`` or when steps == 1 (ByteDance released the 1-step model only as x0-prediction:
    ``sdxl_lightning_1step_unet_x0`` / ``sdxl_lightning_1step_x0``); eps (SDXL's own parameterisation) otherwise.
    """
    if steps == 1 or (filename is not None and is_x0_name(filename)):
        return "x0"
    return "eps"

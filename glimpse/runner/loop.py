"""``glimpse-enhance loop``: rounds of enhance -> refit -> render with the user's own refit and render commands.

Round r (1-based) in WORK_DIR (default ``<VIEWSET_DIR>_loop`` beside the set):

    round_<r>/enhanced/   the enhanced views of this round's input views (``glimpse-enhance run``, resumable)
    refit command         e.g. refit the 3D Gaussian Splatting model on {enhanced_dir}
    round_<r>/render/     render command output: the next round's input view set (view_XX.png [+ depth, mask])
    round_<r>/round.json  written when the round finished: a rerun of the same loop skips finished rounds

Round 1 enhances VIEWSET_DIR itself; round r > 1 enhances ``round_<r-1>/render``. The render command runs in every
round, so the last round's render shows the final model. When a render writes no cameras.json, the input set's is
copied next to the renders (the cameras do not move between rounds).

Placeholders in both commands (substituted shell-quoted; the command runs through the shell):
``{round}`` round number, ``{views_dir}`` this round's input views, ``{enhanced_dir}`` its enhanced views,
``{render_dir}`` where the render must write the next views, ``{round_dir}`` round_<r>/, ``{work_dir}`` WORK_DIR.
A command that exits non-zero stops the loop with its exit code and command line; every round's folders are kept.
One embedded ComfyUI (when no ``--server`` is given) serves all rounds, so models load once.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from .embedded import EmbeddedComfy, EmbeddedError
from .run import RunOptions, run
from .signals import exit_code, stop_on_signals

PLACEHOLDERS = ("round", "views_dir", "enhanced_dir", "render_dir", "round_dir", "work_dir")


class LoopError(RuntimeError):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def expand(template: str, values: dict) -> str:
    """Substitute the placeholders, shell-quoted; an unknown {name} is an error naming the valid ones."""
    try:
        return template.format(**{k: shlex.quote(str(v)) for k, v in values.items()})
    except (KeyError, IndexError) as e:
        raise LoopError(f"unknown placeholder {e} in command {template!r}; valid: "
                        + ", ".join("{" + p + "}" for p in PLACEHOLDERS), 2) from None
    except ValueError as e:
        raise LoopError(f"bad placeholder syntax in command {template!r}: {e} (write literal braces as {{{{ }}}})",
                        2) from None


def _run_cmd(kind: str, cmd: str, rnd: int, say) -> None:
    say(f"round {rnd}: {kind}: {cmd}")
    t0 = time.monotonic()
    rc = subprocess.run(cmd, shell=True, check=False).returncode  # noqa: S602 - the user's own command line
    if rc != 0:
        raise LoopError(f"round {rnd}: the {kind} command failed with exit code {rc}: {cmd}", rc if rc > 0 else 1)
    say(f"round {rnd}: {kind} finished in {time.monotonic() - t0:.1f} s")


def loop(opts: RunOptions, rounds: int, refit_cmd: str, render_cmd: str, work_dir: Path | None = None) -> int:
    with stop_on_signals():
        return _loop(opts, rounds, refit_cmd, render_cmd, work_dir)


def _loop(opts: RunOptions, rounds: int, refit_cmd: str, render_cmd: str, work_dir: Path | None) -> int:
    stream = opts.stream or sys.stderr

    def say(s: str) -> None:
        stream.write(s + "\n")
        stream.flush()

    viewset = Path(opts.viewset)
    work = Path(work_dir) if work_dir else viewset.parent / f"{viewset.name}_loop"
    if rounds < 1:
        say("error: --rounds must be at least 1")
        return 2
    embedded = None
    try:
        for template in (refit_cmd, render_cmd):  # fail on a bad placeholder before any work
            expand(template, {p: "x" for p in PLACEHOLDERS})
        work.mkdir(parents=True, exist_ok=True)
        servers = list(opts.servers)
        views_dir = viewset
        for rnd in range(1, rounds + 1):
            round_dir = work / f"round_{rnd}"
            values = {"round": rnd, "views_dir": views_dir.resolve(),
                      "enhanced_dir": (round_dir / "enhanced").resolve(),
                      "render_dir": (round_dir / "render").resolve(), "round_dir": round_dir.resolve(),
                      "work_dir": work.resolve()}
            record = {"round": rnd, "views_dir": str(values["views_dir"]), "refit_cmd": refit_cmd,
                      "render_cmd": render_cmd}
            done_file = round_dir / "round.json"
            if done_file.is_file():
                try:
                    prev = json.loads(done_file.read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError):
                    prev = {}
                if {k: prev.get(k) for k in record} == record:
                    say(f"round {rnd}: finished in an earlier run, skipped")
                    views_dir = round_dir / "render"
                    continue
            (round_dir / "render").mkdir(parents=True, exist_ok=True)
            if not servers:
                embedded = EmbeddedComfy(opts.models_dir, opts.cpu, opts.comfy_args, log=say)
                servers = [embedded.start()]
            say(f"round {rnd}: enhance {views_dir} -> {values['enhanced_dir']}")
            code = run(replace(opts, viewset=views_dir, out=round_dir / "enhanced", servers=servers))
            if code != 0:
                raise LoopError(f"round {rnd}: enhancing {views_dir} failed (exit {code}); rerun the same command to "
                                "resume", code)
            _run_cmd("refit", expand(refit_cmd, values), rnd, say)
            _run_cmd("render", expand(render_cmd, values), rnd, say)
            render = round_dir / "render"
            if not any(render.glob("view_*.png")):
                raise LoopError(f"round {rnd}: the render command wrote no view_XX.png into {render}")
            if not (render / "cameras.json").exists() and (views_dir / "cameras.json").is_file():
                shutil.copy2(views_dir / "cameras.json", render / "cameras.json")
            done_file.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            views_dir = render
        say(f"loop done: {rounds} round(s) in {work}; last renders in {views_dir}")
        return 0
    except LoopError as e:
        say(f"error: {e}")
        return e.code
    except EmbeddedError as e:
        say(f"error: {e}")
        return 2
    except KeyboardInterrupt as e:
        say("interrupted; rerun the same command to resume (finished rounds are skipped)")
        return exit_code(e)
    finally:
        if embedded is not None:
            embedded.stop()

"""The fleet's bookkeeping, free of Ray and ComfyUI: which set goes to a free server, what a failed attempt means,
whether a set is already finished, fleet.json, and the driver's progress line.

Sets are the unit of work. ``SetSource`` lists only the names in SETS_DIR up front (sorted, so reruns go in the same
order) and opens a set when a server is about to take it, so a folder of thousands of sets starts at once. A set lost
with its server (the actor, its ComfyUI or its node died) goes back to the front of the queue for another server;
after ``retries`` such losses it fails. A set whose run fails with the server still answering (bad input, a node
error) fails at once: ``run`` already treats those as failing on every server alike.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from ..files import atomic_write_bytes, files_digest
from . import manifest as mf
from .progress import Progress, _fmt_s
from .viewset import ViewSetError, check_set, is_viewset

FORMAT = "glimpse-enhance-fleet/1"
REPORT = "fleet.json"
# A set's status in fleet.json: waiting, running on a server, done (this run or an earlier one), or given up.
PENDING, RUNNING, DONE, FAILED, BAD_INPUT, INTERRUPTED = "pending", "running", "done", "failed", "bad_input", \
    "interrupted"
SERVER_LOST = "server_lost"  # an attempt's outcome, never a final status: the set is retried elsewhere


@dataclass
class SetTask:
    name: str
    folder: Path
    attempts: int = 0
    lost_on: set[str] = field(default_factory=set)  # servers this set was lost with
    counted: bool = False  # its views are in the progress total


class SetSource:
    """The view sets of SETS_DIR, opened one at a time (a sub-folder that is no view set is passed over)."""

    def __init__(self, sets_dir: Path):
        self.root = Path(sets_dir)
        self.names = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        self.total = len(self.names)  # shrinks when a folder turns out not to be a set
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self) -> Path:
        while self._next < len(self.names):
            folder = self.root / self.names[self._next]
            self._next += 1
            if is_viewset(folder):
                return folder
            self.total -= 1
        raise StopIteration


class Scheduler:
    """Retried sets first (on a server they were not lost with, while another is alive), then fresh ones."""

    def __init__(self, source, retries: int):
        self.source = iter(source)
        self.retries = retries
        self.queue: deque[SetTask] = deque()
        self._ahead: SetTask | None = None
        self._exhausted = False

    def _peek(self) -> SetTask | None:
        if self._ahead is None and not self._exhausted:
            folder = next(self.source, None)
            if folder is None:
                self._exhausted = True
            else:
                self._ahead = SetTask(folder.name, folder)
        return self._ahead

    def has_work(self) -> bool:
        return bool(self.queue) or self._peek() is not None

    def next_for(self, server: str, others_alive: bool = False) -> SetTask | None:
        for task in self.queue:
            if server not in task.lost_on or not others_alive:
                self.queue.remove(task)
                return self._started(task)
        task = self._peek()
        self._ahead = None
        return self._started(task) if task else None

    @staticmethod
    def _started(task: SetTask) -> SetTask:
        task.attempts += 1
        return task

    def lost(self, task: SetTask, server: str) -> bool:
        """``task`` was lost with ``server``: queue it again (True) unless its retries are spent (False)."""
        task.lost_on.add(server)
        if task.attempts > self.retries:
            return False
        self.queue.appendleft(task)
        return True


def attempt_outcome(code: int, cancelled: bool, server_alive: bool) -> str:
    """What one run of a set on one server came to, from run's exit status and the server's state after it."""
    if code == 0:
        return DONE
    if cancelled:
        return INTERRUPTED
    if not server_alive:  # run reports a vanished server as exit 1 (lost mid-run) or 2 (unreachable at start)
        return SERVER_LOST
    return BAD_INPUT if code == 2 else FAILED


def run_error(log: str) -> str:
    """The error run reported ('error: ...' and the lines that belong to it), else the log's last line."""
    lines = log.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("error: "):
            block = [line[len("error: "):]]
            block += [x for x in lines[i + 1:] if x.startswith(" ")]
            return "\n".join(block)
    return lines[-1] if lines else ""


def set_finished(folder: Path, out_dir: Path, workflow: dict, user: dict, images_only: bool) -> bool:
    """Whether OUT_DIR/<set> holds every view of ``folder`` made with these parameters (the params hash run's
    ``prepare`` records, from the same scan and digest), so the fleet passes the set over without shipping it. Should
    the two ever differ, the set is only shipped again, and its run skips the finished views itself."""
    m = mf.load(out_dir)
    if not m.get("complete"):
        return False
    try:
        spec = check_set(folder, images_only)
        params = mf.params_hash(workflow, user, files_digest(spec.files(), contents=True))
    except (ViewSetError, OSError):
        return False  # the set's own run reports what is wrong with it
    return m.get("params_hash") == params and mf.done_views(m, out_dir, params) >= {v.index for v in spec.views}


class FleetReport:
    """OUT_DIR/fleet.json: every set's status, attempts, time, server and failure message, and the servers' totals.
    Entries of sets this run does not reach are kept from the previous report."""

    def __init__(self, out: Path, **info):
        self.path = Path(out) / REPORT
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = {}
        self.sets: dict[str, dict] = old.get("sets", {}) if old.get("format") == FORMAT else {}
        self.servers: dict[str, dict] = {}
        self.info = info
        self._saved = 0.0
        self._dirty = False

    def set(self, name: str, **fields) -> dict:
        entry = self.sets.setdefault(name, {"status": PENDING, "attempts": 0, "seconds": 0.0, "server": None,
                                            "error": None})
        entry.update(fields)
        self._dirty = True
        return entry

    def server(self, label: str, **fields) -> dict:
        entry = self.servers.setdefault(label, {"sets": 0, "views": 0, "busy_s": 0.0, "lost_sets": 0})
        entry.update(fields)
        self._dirty = True  # the caller may add to the entry it gets
        return entry

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.sets.values():
            out[e["status"]] = out.get(e["status"], 0) + 1
        return out

    def save(self, force: bool = True) -> None:
        """Write atomically; ``force=False`` writes changes at most once a second, so a fleet of thousands of sets
        does not rewrite the whole report for every set that starts or ends."""
        if not force and (not self._dirty or time.monotonic() - self._saved < 1.0):
            return
        self._saved, self._dirty = time.monotonic(), False
        data = {"format": FORMAT, **self.info, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "counts": self.counts(), "sets": dict(sorted(self.sets.items())), "servers": self.servers}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1) + "\n").encode())


def throughput_line(label: str, s: dict) -> str:
    views = s["views"]
    per_view = f", {s['busy_s'] / views:.2f} s/view" if views else ""
    per_hour = f", {3600 * s['sets'] / s['busy_s']:.1f} sets/h busy" if s["busy_s"] and s["sets"] else ""
    lost = f", {s['lost_sets']} set(s) lost" if s["lost_sets"] else ""
    return f"  {label}: {s['sets']} set(s), {views} view(s) run in {s['busy_s']:.1f} s{per_view}{per_hour}{lost}"


class FleetProgress(Progress):
    """run's progress line (redrawn on a terminal, a line per event otherwise) counting sets as well as views."""

    def __init__(self, sets_total: int, stream=None, tty: bool | None = None):
        super().__init__(0, 0, stream, tty)
        self.sets_total, self.sets_done, self.sets_failed, self.sets_run, self.running = sets_total, 0, 0, 0, 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.t0
        rate = self.sets_run / elapsed if self.sets_run and elapsed > 0 else None
        left = self.sets_total - self.sets_done - self.sets_failed
        eta = left / rate if rate else None
        spv = self.seconds_per_view()
        return (f"sets {self.sets_done}/{self.sets_total} ({self.sets_failed} failed, {self.running} running)  "
                f"views {self.done - self.skipped} run, {self.skipped} skipped  "
                f"{f'{spv:.1f}' if spv else '-'} s/view  {f'{3600 * rate:.1f}' if rate else '-'} sets/h  "
                f"ETA {_fmt_s(eta)}  elapsed {_fmt_s(elapsed)}")

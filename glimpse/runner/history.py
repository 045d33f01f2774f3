"""What a server reports about a finished prompt (``/history/<id>``): its output files by view, its own execution
time, and what the run measured around it.

Output files are matched by name: ``view_XX.png``, ``confidence_XX.png``, ``hint_XX.png`` named by the original view
index, with or without the ``_00001_`` counter SaveImage adds (per-view workflows).
"""
from __future__ import annotations

import json
import re
import threading
import urllib.error
from dataclasses import dataclass, field

OUTPUT_RE = re.compile(r"^(view|confidence|hint)_(\d+)(?:_\d{5}_)?\.png$")


def output_files(history: dict) -> list[dict]:
    """Every {filename, subfolder, type} entry of type output in a history entry's outputs."""
    found = []
    for node_out in (history.get("outputs") or {}).values():
        for items in node_out.values():
            for it in items if isinstance(items, list) else []:
                if isinstance(it, dict) and "filename" in it and it.get("type", "output") == "output":
                    found.append(it)
    return found


def outputs_by_view(history: dict, views: list[int]) -> tuple[dict[int, dict[str, dict]], list[int]]:
    """({view: {local file name: history entry}}, views lacking their view_XX.png) for the prompt of ``views``."""
    per_view: dict[int, dict[str, dict]] = {v: {} for v in views}
    for it in output_files(history):
        m = OUTPUT_RE.match(it["filename"])
        if m and int(m.group(2)) in per_view:
            per_view[int(m.group(2))][f"{m.group(1)}_{int(m.group(2)):02d}.png"] = it
    return per_view, [v for v in views if f"view_{v:02d}.png" not in per_view[v]]


def result_facts(client, subfolder: str) -> dict | None:
    """SaveViewSet's manifest.json beside the views (via ``client.view``): the prompt's parameters, models and seed,
    and the cross-view attention's mode, anchors and each view's anchors."""
    try:
        data = json.loads(client.view("manifest.json", subfolder, "output"))
    except (urllib.error.HTTPError, json.JSONDecodeError):
        return None
    return {k: data[k] for k in ("parameters", "models", "seed", "cross_view") if k in data} or None


def server_seconds(history: dict) -> float:
    """execution_start -> execution_success from the history's status messages (ms timestamps)."""
    ts = {m[0]: m[1].get("timestamp") for m in (history.get("status") or {}).get("messages", [])
          if isinstance(m, list) and len(m) == 2 and isinstance(m[1], dict)}
    if ts.get("execution_start") and ts.get("execution_success"):
        return (ts["execution_success"] - ts["execution_start"]) / 1000.0
    return 0.0


@dataclass
class Timing:
    upload_s: float = 0.0
    queue_s: float = 0.0
    collect_s: float = 0.0
    server_s: float = 0.0
    wall_s: float = 0.0
    views: int = 0
    prompts: int = 0
    executed: dict = field(default_factory=dict)  # class_type -> prompts in which it ran (not served from cache)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count_executed(self, classes: set[str]) -> None:
        with self.lock:
            self.prompts += 1
            for c in classes:
                self.executed[c] = self.executed.get(c, 0) + 1

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        d = {k: round(getattr(self, k), 4) for k in ("upload_s", "queue_s", "collect_s", "server_s", "wall_s")}
        d["views"] = self.views
        d["prompts"] = self.prompts
        d["executed_nodes"] = dict(sorted(self.executed.items()))
        if self.views:
            d["overhead_per_view_s"] = round((self.upload_s + self.queue_s + self.collect_s) / self.views, 4)
            d["server_per_view_s"] = round(self.server_s / self.views, 4)
        return d

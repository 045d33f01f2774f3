"""The work of a run: one :class:`SetJob` per view set, and the :class:`WorkPool` of chunks waiting for a server."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..scan import ViewSetSpec


@dataclass
class SetJob:
    name: str
    folder: Path
    out_dir: Path
    files: list[Path]  # what is uploaded: the files the scan accepted
    inputs_hash: str
    views: list[int]
    params: str
    manifest: dict
    workflow: dict  # user overrides applied
    spec: ViewSetSpec  # the scan the files come from
    anchors: list[int] = field(default_factory=list)  # cross-view anchors (sampled first, on every server); [] = off
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploaded: set = field(default_factory=set)
    recorded: set = field(default_factory=set)  # servers that sampled the anchors in this run (they hold the record)

    @property
    def input_subfolder(self) -> str:
        return f"glimpse/{self.inputs_hash[:12]}"

    @property
    def output_subfolder(self) -> str:
        return f"glimpse/{self.params[:12]}"

    def image_name(self, view: int) -> str:
        """The uploaded file name of a view's image (as the set spells it)."""
        return self.spec.views[view].image.name


class WorkPool:
    """Chunks waiting for a server. A worker keeps to the set it started (its upload and its prompt encoding are
    cached on that server), takes a set nobody works on next, and only then helps with another worker's set: whole
    sets go to servers when there are enough sets, and one set's views are shared when there are not."""

    def __init__(self):
        self.items: list[tuple[SetJob, list[int]]] = []
        self.owner: dict[str, str] = {}  # set name -> worker that claimed it
        self.lock = threading.Lock()

    def put(self, item: tuple[SetJob, list[int]]) -> None:
        with self.lock:
            self.items.append(item)
            # set by set; within a set its anchors first (the other views attend to them), then in view order
            self.items.sort(key=lambda it: (it[0].name, it[1] != it[0].anchors, it[1][0]))

    def take(self, worker: str) -> tuple[SetJob, list[int]] | None:
        with self.lock:
            if not self.items:
                return None
            mine = [it for it in self.items if self.owner.get(it[0].name) == worker]
            free = [it for it in self.items if it[0].name not in self.owner]
            item = (mine or free or self.items)[0]
            self.owner.setdefault(item[0].name, worker)
            self.items.remove(item)
            return item

    def release(self, worker: str) -> None:
        """A lost worker's sets become free for the others."""
        with self.lock:
            self.owner = {k: w for k, w in self.owner.items() if w != worker}

    def empty(self) -> bool:
        with self.lock:
            return not self.items

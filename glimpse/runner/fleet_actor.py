"""One fleet server: a ComfyUI (embedded on this node, or a running one attached by URL) and the set it runs.

``fleet.py`` makes ``ServerWorker`` a Ray actor; nothing here imports Ray, so the class works (and is tested) as a
plain object. A set runs through ``run.run`` itself, in a thread of the worker, with the worker's server as its only
``--server``: chunking, uploads, manifests and scores are run's own.

How files travel when the nodes share no filesystem: the driver sends the set's files and what OUT_DIR/<set> already
holds (the manifest and the files of its finished views); the worker writes them into a temporary folder and runs
there, so run resumes from the manifest as it would on the driver. ``poll`` hands back the files of every view the
manifest records as finished since the last poll, with the manifest, so a worker that dies mid-set loses at most the
views finished since the driver last polled it. With ``shared`` paths the worker runs on the driver's folders directly
and ``poll`` returns the manifest only (for progress).
"""
from __future__ import annotations

import io
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from ..files import atomic_write_bytes
from . import manifest as mf
from .client import ComfyClient, ServerUnreachable
from .embedded import PID_FILE, EmbeddedComfy, remove_stale_bases
from .fleet_plan import attempt_outcome, run_error
from .prepare import RunOptions
from .run import run
from .viewset import check_set


def pack_inputs(folder: Path, images_only: bool) -> dict[str, bytes]:
    """The files of a set that run reads (what its scan accepts: views, depth, masks, cameras); ViewSetError naming
    the file when the set is unusable."""
    return {p.name: p.read_bytes() for p in check_set(folder, images_only).files()}


def pack_outputs(out_dir: Path) -> dict[str, bytes]:
    """What OUT_DIR/<set> holds for a resume: its manifest and the files its view entries list."""
    m = mf.load(out_dir)
    if not m:
        return {}
    names = {f for entry in m.get("views", {}).values() for f in entry.get("files") or []}
    files = {n: (Path(out_dir) / n).read_bytes() for n in sorted(names) if (Path(out_dir) / n).is_file()}
    files[mf.MANIFEST] = (Path(out_dir) / mf.MANIFEST).read_bytes()
    return files


def write_outputs(out_dir: Path, files: dict[str, bytes], manifest: dict | None, set_dir: Path, workflow: str) -> None:
    """Driver side of a poll: the views' files first, then the manifest, each atomically, so OUT_DIR/<set> never lists
    a view whose files are not there. The manifest names the driver's folders where the worker's temporary ones
    stood, as run on the driver would have written it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(out_dir / Path(name).name, data)
    if manifest:
        manifest = {**manifest, "viewset": str(Path(set_dir).resolve()), "workflow": workflow}
        if isinstance(manifest.get("scores"), dict) and "set_dir" in manifest["scores"]:
            manifest["scores"] = {**manifest["scores"], "set_dir": str(set_dir), "views_dir": str(out_dir)}
        mf.save(manifest, out_dir)


TMP_PREFIX = "glimpse-fleet-"


class _Log(io.StringIO):
    """run's stream: the text it wrote, readable while it writes."""

    def isatty(self) -> bool:
        return False


class ServerWorker:
    def __init__(self, attach: str | None = None, models_dir: str | None = None, cpu: bool | None = None,
                 comfy_args: list[str] | None = None):
        self.attach = attach
        self.models_dir, self.cpu, self.comfy_args = models_dir, cpu, list(comfy_args or [])
        self.embedded: EmbeddedComfy | None = None
        self.url = ""
        self.thread: threading.Thread | None = None

    # -- the server ---------------------------------------------------------------------------------------------
    def start(self) -> dict:
        """Start (or attach to) the server; returns where it is."""
        if self.attach:
            self.url = ComfyClient(self.attach).url
            ComfyClient(self.url).check()  # ServerUnreachable names the URL
        else:
            self.embedded = EmbeddedComfy(self.models_dir, self.cpu, self.comfy_args)
            self.url = self.embedded.start()
        return self.info()

    def info(self) -> dict:
        proc = self.embedded.proc if self.embedded else None
        return {"url": self.url, "host": socket.gethostname(), "pid": os.getpid(),
                "comfy_pid": proc.pid if proc else None}

    def restart(self) -> dict:
        """After the server was lost: a fresh embedded ComfyUI, or the attached one if it answers again."""
        self.stop_server()
        return self.start()

    def server_alive(self) -> bool:
        if self.embedded and self.embedded.proc and self.embedded.proc.poll() is not None:
            return False
        try:
            ComfyClient(self.url).check()
            return True
        except ServerUnreachable:
            return False

    def stop_server(self) -> None:
        if self.embedded:
            self.embedded.stop()
            self.embedded = None

    # -- one set ------------------------------------------------------------------------------------------------
    def begin(self, job: dict) -> None:
        """Start running one set (see ``fleet.make_job`` for the fields) in a thread; ``poll`` follows it."""
        if self.thread is not None:
            raise RuntimeError(f"server {self.url} is still running set {self.job['name']}")
        self.job = job
        self.tmp = None
        self.sent: dict[str, tuple[int, int]] = {}  # file -> (mtime_ns, size) when the driver got it
        self.stamp = None
        if job.get("shared"):
            set_dir, out_dir, workflow = (Path(job["shared"][k]) for k in ("viewset", "out", "workflow"))
        else:
            remove_stale_bases(prefix=TMP_PREFIX)  # of workers killed on this node before they could clean up
            self.tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
            (self.tmp / PID_FILE).write_text(f"{os.getpid()}\n")
            set_dir, out_dir, workflow = self.tmp / "in" / job["name"], self.tmp / "out" / job["name"], \
                self.tmp / "workflow.json"
            set_dir.mkdir(parents=True)
            out_dir.mkdir(parents=True)
            workflow.write_text(job["workflow_text"], encoding="utf-8")
            for name, data in job["inputs"].items():
                (set_dir / Path(name).name).write_bytes(data)
            for name, data in job["outputs"].items():
                (out_dir / Path(name).name).write_bytes(data)
                self.sent[name] = self._stat(out_dir / name)
        self.out_dir = out_dir
        # run's messages name the worker's folders; the driver's user knows the driver's
        theirs = job["paths"]
        self.renames = {} if job.get("shared") else {str(set_dir): theirs["set"], str(out_dir): theirs["out"],
                                                      str(workflow): theirs["workflow"]}
        self.log = _Log()
        self.cancelled = False
        self.stop_run = threading.Event()  # run sets it too, on a fatal error: not a sign of cancel()
        self.code: int | None = None
        self.t0 = time.monotonic()
        opts = RunOptions(viewset=set_dir, out=out_dir, servers=[self.url], workflow=str(workflow),
                          overrides=job["overrides"], chunk=job.get("chunk"), stream=self.log, tty=False,
                          stop=self.stop_run)
        self.thread = threading.Thread(target=self._run, args=(opts,), daemon=True, name=f"glimpse-{job['name']}")
        self.thread.start()

    def _run(self, opts: RunOptions) -> None:
        try:
            self.code = run(opts)
        except Exception as e:  # run reports its own failures; anything else still ends the attempt readably
            self.log.write(f"error: {type(e).__name__}: {e}\n")
            self.code = 1

    @staticmethod
    def _stat(p: Path) -> tuple[int, int]:
        st = p.stat()
        return st.st_mtime_ns, st.st_size

    def _manifest_stamp(self):
        try:
            st = (self.out_dir / mf.MANIFEST).stat()
            return st.st_ino, st.st_mtime_ns, st.st_size
        except FileNotFoundError:
            return None

    def poll(self, wait: float = 1.0) -> dict:
        """Wait up to ``wait`` s for the manifest to change or the set to end; return the newly finished views'
        files (none with shared paths), the manifest when it changed, and at the end run's exit status, the
        attempt's outcome (``fleet_plan.attempt_outcome``), run's error message and the seconds the set took."""
        deadline = time.monotonic() + wait
        while self.thread.is_alive() and self._manifest_stamp() == self.stamp and time.monotonic() < deadline:
            time.sleep(0.05)
        ended = not self.thread.is_alive()
        result = {"files": {}, "manifest": None, "done": ended}
        stamp = self._manifest_stamp()
        if stamp != self.stamp:
            self.stamp = stamp
            result["manifest"] = m = mf.load(self.out_dir)
            if not self.job.get("shared"):
                result["files"] = self._new_files(m)
        if ended:
            code = self.code if self.code is not None else 1
            alive = code == 0 or self.server_alive()
            text = self.log.getvalue()
            for local, theirs in self.renames.items():
                text = text.replace(local, theirs)
            result.update(code=code, outcome=attempt_outcome(code, self.cancelled, alive),
                          error=run_error(text) if code else None, log_tail="\n".join(text.splitlines()[-20:]),
                          seconds=round(time.monotonic() - self.t0, 3))
            self.thread = None
            if self.tmp is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
        return result

    def _new_files(self, manifest: dict) -> dict[str, bytes]:
        """Files of the manifest's finished views that the driver lacks (new, or remade since it got them)."""
        out = {}
        for entry in manifest.get("views", {}).values():
            for name in entry.get("files") or []:
                p = self.out_dir / name
                stat = self._stat(p)
                if self.sent.get(name) != stat:
                    out[name] = p.read_bytes()
                    self.sent[name] = stat
        return out

    def cancel(self) -> None:
        """Stop the set as Ctrl-C stops run: the prompt in flight is interrupted, finished views stay."""
        if self.thread is not None:
            self.cancelled = True
            self.stop_run.set()

    def stop(self) -> None:
        self.cancel()
        if self.thread is not None:
            self.thread.join(30)
        self.stop_server()

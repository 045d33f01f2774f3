"""``glimpse-enhance run``: a view set (or a folder of sets) in, enhanced views, confidences, hints and a manifest out.

How a run goes:

1. The API workflow is loaded (a canvas file is refused), the user's overrides are applied by class + input through
   ``workflow.OVERRIDES`` (an override with no node to land on is an error, before anything is sent), the output
   folder is checked for writing, and OUT_DIR/manifest.json decides which views are already done (params hash).
   Nothing to do: no server is contacted.
2. Servers: the ``--server`` URLs (each checked within 4 s), or an embedded ComfyUI (``embedded.EmbeddedComfy``).
3. Each set's files are uploaded once per server (``POST /upload/image``, any file type) into the input subfolder
   ``glimpse/<first 12 hex of the set's content hash>/``; LoadViewSet's ``path`` gets that subfolder.
4. The pending views are cut into chunks (``--chunk``, default 4) and ONE prompt is queued per chunk with LoadViewSet's
   ``views`` set to the chunk ("4-7") and SaveViewSet's ``subfolder`` to ``glimpse/<params hash>``. Only those two
   inputs change between chunk prompts, so ComfyUI's cache keeps the model loads and the prompt encoding: models load
   once per server and run, the prompt is encoded once per set. A per-view workflow (LoadImage -> ... -> SaveImage)
   gets one prompt per view instead.
5. A queue of chunks feeds one worker thread per server. A server that fails (connection refused/reset, websocket
   lost) puts its chunk back for the others and leaves; a node error (validation or execution) stops the run, since
   it would fail on every server alike.
6. The files a finished prompt lists in ``/history/<id>`` outputs (type output) are fetched with ``GET /view`` and
   written into OUT_DIR atomically; the manifest is rewritten after every chunk, so an interrupted run keeps every
   finished view and its manifest lists ``missing_views``. When a set is complete its consistency score goes into
   the manifest (``glimpse.consistency``, when available).

Exit codes: 0 done, 1 the run failed (node error, every server lost), 2 bad input (arguments, workflow, view set,
output folder, unreachable server), 130 interrupted (Ctrl-C). Rerunning the same command resumes.
"""
from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

from . import manifest as mf
from .client import ComfyClient, ExecutionFailed, Interrupted, PromptRejected, ServerUnreachable
from .embedded import EmbeddedComfy, EmbeddedError
from .progress import Progress
from .viewset import ViewSetError, chunk_views, files_hash, find_viewsets, selection_string, view_indices, viewset_files
from .workflow import MEMORY_PRESET, OverrideError, WorkflowError, apply_overrides, load_workflow, resolve_workflow, workflow_mode

DEFAULT_CHUNK = 4
USER_OPTIONS = ("preset", "steps", "strength", "seed", "subject", "template", "resolution", "save_hints")
OUTPUT_RE = re.compile(r"^(view|confidence|hint)_(\d+)(?:_\d{5}_)?\.png$")


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


@dataclass
class SetJob:
    name: str
    folder: Path
    out_dir: Path
    files: list[Path]
    inputs_hash: str
    views: list[int]
    params: str
    manifest: dict
    workflow: dict  # user overrides applied
    lock: threading.Lock = field(default_factory=threading.Lock)
    uploaded: set = field(default_factory=set)

    @property
    def input_subfolder(self) -> str:
        return f"glimpse/{self.inputs_hash[:12]}"

    @property
    def output_subfolder(self) -> str:
        return f"glimpse/{self.params[:12]}"


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


def _server_seconds(history: dict) -> float:
    """execution_start -> execution_success from the history's status messages (ms timestamps)."""
    ts = {m[0]: m[1].get("timestamp") for m in (history.get("status") or {}).get("messages", [])
          if isinstance(m, list) and len(m) == 2 and isinstance(m[1], dict)}
    if ts.get("execution_start") and ts.get("execution_success"):
        return (ts["execution_success"] - ts["execution_start"]) / 1000.0
    return 0.0


def output_files(history: dict) -> list[dict]:
    """Every {filename, subfolder, type} entry of type output in a history entry's outputs."""
    found = []
    for node_out in (history.get("outputs") or {}).values():
        for items in node_out.values():
            for it in items if isinstance(items, list) else []:
                if isinstance(it, dict) and "filename" in it and it.get("type", "output") == "output":
                    found.append(it)
    return found


def preset_chunk(workflow: dict) -> int:
    """Views per prompt: the workflow's MemoryPreset views_per_chunk (named preset or custom field), else 4."""
    try:
        from ..presets import PRESETS
    except ImportError:
        return DEFAULT_CHUNK
    for n in workflow.values():
        if n["class_type"] == MEMORY_PRESET:
            inputs = n["inputs"]
            named = PRESETS.get(inputs.get("preset"))
            if inputs.get("preset") == "custom" and isinstance(inputs.get("views_per_chunk"), int):
                return inputs["views_per_chunk"]
            if named is not None:
                return named.views_per_chunk
    return DEFAULT_CHUNK


def compute_scores(job: SetJob) -> dict:
    """The set's scores (glimpse.consistency) for the manifest; a failure is recorded, never fatal to the run."""
    try:
        from ..score import score_folders

        t0 = time.monotonic()
        # the enhanced views against the set they came from, exactly as `glimpse-enhance score` scores them
        scores = score_folders(job.out_dir, job.folder)
        scores.pop("pairs", None)  # per-pair details stay out of the manifest; per_view keeps the per-view means
        scores["seconds"] = round(time.monotonic() - t0, 3)
        return scores
    except Exception as e:  # scoring is a report: the views are on disk either way
        return {"error": f"{type(e).__name__}: {e}"}


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
            self.items.sort(key=lambda it: it[1][0])
            self.items.sort(key=lambda it: it[0].name)  # stable: set by set, view order within a set

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


class Runner:
    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.out = Path(opts.out)
        self.timing = Timing()
        self.stop = threading.Event()
        self.fatal: list[BaseException] = []
        self.progress: Progress | None = None
        self.jobs: list[SetJob] = []
        self.mode = ""
        self.workflow_path = None

    # -- preparation (no server) ----------------------------------------------------------------------------
    def prepare(self) -> None:
        o = self.opts
        try:
            self.workflow_path = resolve_workflow(o.workflow)
            base = load_workflow(self.workflow_path)
            self.mode = workflow_mode(base)
            user = {k: o.overrides.get(k) for k in USER_OPTIONS}
            wf, self.applied = apply_overrides(base, user, str(self.workflow_path))
            probe = ({"path": "x", "views": "0", "subfolder": "x"} if self.mode == "set"
                     else {"image": "x", "filename_prefix": "x"})
            apply_overrides(wf, probe, str(self.workflow_path))
            sets = find_viewsets(Path(o.viewset))
        except (WorkflowError, OverrideError, ViewSetError) as e:
            raise RunError(str(e), 2) from None
        if o.chunk is not None and o.chunk < 1:
            raise RunError(f"--chunk must be at least 1, got {o.chunk}", 2)
        self.chunk = 1 if self.mode == "per-view" else o.chunk  # None: the preset's, decided in execute()
        out_dirs = [self.out if len(sets) == 1 else self.out / folder.name for folder in sets]
        for folder in sets:  # before anything is written
            for out_dir in out_dirs:
                check_apart(folder, out_dir)
        check_writable(self.out)
        for folder, out_dir in zip(sets, out_dirs):
            check_writable(out_dir)
            try:
                files = viewset_files(folder)
                views = view_indices(folder)
            except ViewSetError as e:
                raise RunError(str(e), 2) from None
            ih = files_hash(files)
            params = mf.params_hash(base, user, ih)
            m = mf.new(mf.load(out_dir), params, viewset=str(folder.resolve()), inputs_hash=ih,
                       workflow=str(self.workflow_path), overrides=user, views=views, out_dir=out_dir)
            mf.save(m, out_dir)
            self.jobs.append(SetJob(folder.name, folder, out_dir, files, ih, views, params, m, wf))

    # -- execution --------------------------------------------------------------------------------------------
    def _upload(self, client: ComfyClient, job: SetJob) -> None:
        with job.lock:
            if client.url in job.uploaded:
                return
        t0 = time.monotonic()
        for p in job.files:
            client.upload(p, job.input_subfolder)
        self.timing.add(upload_s=time.monotonic() - t0)
        with job.lock:
            job.uploaded.add(client.url)

    def _chunk_prompt(self, job: SetJob, views: list[int]) -> dict:
        if self.mode == "set":
            values = {"path": job.input_subfolder, "views": selection_string(views), "subfolder": job.output_subfolder}
        else:
            values = {"image": f"{job.input_subfolder}/view_{views[0]:02d}.png",
                      "filename_prefix": f"{job.output_subfolder}/view_{views[0]:02d}"}
        return apply_overrides(job.workflow, values)[0]

    def _collect(self, client: ComfyClient, job: SetJob, views: list[int], history: dict) -> None:
        per_view: dict[int, dict[str, dict]] = {v: {} for v in views}
        for it in output_files(history):
            m = OUTPUT_RE.match(it["filename"])
            if m and int(m.group(2)) in per_view:
                per_view[int(m.group(2))][f"{m.group(1)}_{int(m.group(2)):02d}.png"] = it
        lacking = [v for v in views if f"view_{v:02d}.png" not in per_view[v]]
        if lacking:
            listed = ", ".join(sorted(it["filename"] for it in output_files(history))) or "none"
            raise RunError(f"the workflow's outputs lack {', '.join(f'view_{v:02d}.png' for v in lacking)} "
                           f"(files listed by the server: {listed}); is SaveViewSet in the workflow?")
        for v in views:
            for name, it in per_view[v].items():
                data = client.view(it["filename"], it.get("subfolder", ""), "output")
                mf.write_atomic(job.out_dir / name, data)
        node_manifest = None
        if self.mode == "set" and not job.manifest.get("workflow_facts"):
            node_manifest = self._node_manifest(client, per_view[views[0]]["view_%02d.png" % views[0]])
        with job.lock:
            for v in views:
                mf.record(job.manifest, v, job.params, list(per_view[v]), server=client.url)
            if node_manifest:
                job.manifest["workflow_facts"] = node_manifest
            mf.save(job.manifest, job.out_dir)

    @staticmethod
    def _node_manifest(client: ComfyClient, view_item: dict) -> dict | None:
        """SaveViewSet's manifest.json beside the views: the prompt's parameters, model files and seed."""
        try:
            data = json.loads(client.view("manifest.json", view_item.get("subfolder", ""), "output"))
        except (urllib.error.HTTPError, json.JSONDecodeError):
            return None
        return {k: data[k] for k in ("parameters", "models", "seed") if k in data} or None

    def _run_chunk(self, client: ComfyClient, job: SetJob, views: list[int]) -> None:
        self._upload(client, job)
        prompt = self._chunk_prompt(job, views)
        sel = selection_string(views)
        label = f"{job.name} views {sel}" if len(self.jobs) > 1 else f"views {sel}"
        t_start = time.monotonic()
        t_q = {}
        ran: set[str] = set()

        def on_queued(_pid):
            t_q["queued"] = time.monotonic()

        def on_event(kind, data):
            if kind == "progress":
                self.progress.step_update(f"{label}: step {data.get('value')}/{data.get('max')} on {client.url}")
            elif kind == "executing" and data.get("node"):
                node = prompt.get(str(data["node"])) or prompt.get(str(data.get("display_node")))
                cls = node["class_type"] if node else str(data["node"])
                ran.add(cls)
                self.progress.step_update(f"{label}: {cls} on {client.url}")

        _, history = client.run(prompt, on_event, self.stop, source=f"the prompt for {label}", on_queued=on_queued)
        t_done = time.monotonic()
        self._collect(client, job, views, history)
        t_end = time.monotonic()
        self.timing.count_executed(ran)
        self.timing.add(queue_s=t_q.get("queued", t_start) - t_start, collect_s=t_end - t_done,
                        server_s=_server_seconds(history), wall_s=t_end - t_start, views=len(views))
        self.progress.views_done(len(views), f"{label} on {client.url}")

    def _worker(self, client: ComfyClient, work: WorkPool, alive: dict) -> None:
        while not self.stop.is_set():
            item = work.take(client.url)
            if item is None:
                return
            job, views = item
            try:
                self._run_chunk(client, job, views)
            except ServerUnreachable as e:
                work.put((job, views))
                work.release(client.url)
                with self._alive_lock:
                    alive[client.url] = False
                    others = [u for u, ok in alive.items() if ok]
                self.progress.message(f"server lost: {e}" + (f"; its views move to {', '.join(others)}"
                                                               if others else ""))
                return
            except Interrupted as e:
                if not self.stop.is_set():
                    self.fatal.append(RunError(str(e)))
                    self.stop.set()
                work.put((job, views))
                return
            except (PromptRejected, ExecutionFailed, RunError, OSError) as e:
                work.put((job, views))
                self.fatal.append(e)
                self.stop.set()
                return

    def check_servers(self, servers: list[str]) -> list[ComfyClient]:
        clients = []
        for url in servers:
            c = ComfyClient(url)
            try:
                c.check()
                clients.append(c)
            except ServerUnreachable as e:
                if len(servers) == 1:
                    raise RunError(str(e), 2) from None
                self.progress.message(f"skipping {e}")
        if not clients:
            raise RunError(f"none of the servers is reachable: {', '.join(servers)}", 2)
        return clients

    def execute(self, servers: list[str]) -> None:
        clients = self.check_servers(servers)
        if self.chunk is None:  # after the server check: the presets module imports torch, which takes seconds
            self.chunk = preset_chunk(self.jobs[0].workflow)
        self.progress.message(f"{len(clients)} server(s), {self.chunk} view(s) per prompt")
        work = WorkPool()
        for job in self.jobs:
            for views in chunk_views(job.manifest["missing_views"], self.chunk):
                work.put((job, views))
        alive = {c.url: True for c in clients}
        self._alive_lock = threading.Lock()
        threads = [threading.Thread(target=self._worker, args=(c, work, alive), daemon=True,
                                    name=f"glimpse-{c.url}") for c in clients]
        self.progress.start()
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            self.progress.message("interrupted: stopping the prompts in flight ...")
            for t in threads:
                t.join(15)
            raise
        if self.fatal:
            e = self.fatal[0]
            raise RunError(str(e), getattr(e, "code", 1))
        if not work.empty():
            raise RunError("every server was lost before the run finished")

    def finish_scores(self) -> None:
        for job in self.jobs:
            if job.manifest["complete"] and job.manifest.get("scores") is None:
                job.manifest["scores"] = compute_scores(job)
            job.manifest["timing"] = self.timing.as_dict()
            mf.save(job.manifest, job.out_dir)


def run(opts: RunOptions) -> int:
    """Run and report on ``opts.stream`` (stderr); returns the exit status."""
    stream = opts.stream or sys.stderr
    r = Runner(opts)

    def say(s: str) -> None:
        if r.progress:
            r.progress.message(s)
        else:
            stream.write(s + "\n")
            stream.flush()

    try:
        r.prepare()
    except RunError as e:
        say(f"error: {e}")
        return e.code
    total = sum(len(j.views) for j in r.jobs)
    todo = sum(len(j.manifest["missing_views"]) for j in r.jobs)
    r.progress = Progress(total, total - todo, stream, opts.tty)
    say(f"workflow {r.workflow_path} ({r.mode} mode); {len(r.jobs)} set(s), {total} views, "
        f"{total - todo} already done (skipped), {todo} to run")
    for a in r.applied:
        say(f"  override {a}")
    embedded = None
    code = 0
    t0 = time.monotonic()
    try:
        if todo:
            servers = list(opts.servers)
            if not servers:
                embedded = EmbeddedComfy(opts.models_dir, opts.cpu, opts.comfy_args, log=say)
                servers = [embedded.start()]
            r.execute(servers)
        r.finish_scores()
    except EmbeddedError as e:
        say(f"error: {e}")
        code = 2
    except RunError as e:
        say(f"error: {e}")
        code = e.code
    except KeyboardInterrupt:
        code = 130
    finally:
        if embedded is not None:
            embedded.stop()
        for job in r.jobs:
            with job.lock:
                mf.save(job.manifest, job.out_dir)
        r.progress.close()
    missing = {j.name: j.manifest["missing_views"] for j in r.jobs if j.manifest["missing_views"]}
    if code == 0:
        t = r.timing.as_dict()
        extra = (f"; runner overhead {t['overhead_per_view_s']:.3f} s/view (upload {t['upload_s']:.2f} s, queue "
                 f"{t['queue_s']:.2f} s, download {t['collect_s']:.2f} s), server {t['server_per_view_s']:.2f} s/view"
                 if t["views"] else "")
        say(f"done: {total} views in {time.monotonic() - t0:.1f} s ({r.timing.views} run, {total - todo} skipped) "
            f"-> {r.out}{extra}")
    elif missing:
        say("missing views (rerun the same command to resume): "
            + "; ".join(f"{k}: {selection_string(v)}" for k, v in missing.items()))
    return code

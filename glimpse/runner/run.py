"""``glimpse-enhance run``: a view set (or a folder of sets) in, enhanced views, confidences, hints and a manifest out.

How a run goes:

1. Here, before any server: the API workflow is loaded (a canvas file is refused), the user's overrides are applied
   by class + input through ``workflow.OVERRIDES`` and their values checked (an unknown preset, template or step
   count, or an override with no node to land on, is an error), each set is scanned with the library's header-only
   validation (``viewset.check_set``: the user's own paths in every message), an output folder that is, lies inside
   or holds a set is refused, the output folder is checked for writing, and OUT_DIR/manifest.json decides which views
   are already done (params hash). Nothing to do: no server is contacted.
2. Servers: the ``--server`` URLs (each checked within 4 s), or an embedded ComfyUI (``embedded.EmbeddedComfy``).
3. Each set's files (exactly those the scan accepted) are uploaded once per server (``POST /upload/image``, any file
   type) into the input subfolder ``glimpse/<first 12 hex of the set's content hash>/``; LoadViewSet's ``path`` gets
   that subfolder.
4. The pending views are cut into chunks (``--chunk``, default: the preset's views per chunk, else 4) and ONE prompt
   is queued per chunk with LoadViewSet's ``views`` set to the chunk ("4-7") and SaveViewSet's ``subfolder`` to
   ``glimpse/<params hash>``. Only those two inputs change between chunk prompts, so ComfyUI's cache keeps the model
   loads and the prompt encoding: models load once per server and run, the prompt is encoded once per set. A
   per-view workflow (LoadImage -> ... -> SaveImage) gets one prompt per view instead.
5. A queue of chunks feeds one worker thread per server (``pool.WorkPool``). A server that fails (connection
   refused/reset, websocket lost) puts its chunk back for the others and leaves; a node error (validation or
   execution) stops the run, since it would fail on every server alike.
6. The files a finished prompt lists in ``/history/<id>`` outputs (``history``) are fetched with ``GET /view`` and
   written into OUT_DIR atomically; the manifest is rewritten after every chunk, so an interrupted run keeps every
   finished view and its manifest lists ``missing_views``. When a set is complete its consistency score goes into
   the manifest (``glimpse.score``).
7. Cleanup: an embedded server and its temporary folder (inputs and outputs included) go on success, error, Ctrl-C
   and SIGTERM (``signals``). ComfyUI has no route to delete files, so on a ``--server`` the uploaded inputs and the
   server-side outputs stay; the run's last lines say where.

Exit codes: 0 done, 1 the run failed (node error, every server lost), 2 bad input (arguments, workflow, view set,
output folder, unreachable server), 130 interrupted (SIGINT, Ctrl-C), 143 terminated (SIGTERM). Rerunning the same
command resumes.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ..files import atomic_write_bytes
from ..views import chunk_views, selection_string, view_name
from . import manifest as mf
from .client import ComfyClient, ExecutionFailed, Interrupted, PromptRejected, ServerUnreachable
from .embedded import EmbeddedComfy, EmbeddedError
from .history import Timing, output_files, outputs_by_view, result_facts, server_seconds
from .pool import SetJob, WorkPool
from .prepare import RunError, RunOptions, prepare
from .progress import Progress
from .signals import exit_code, ignore_signals, stop_on_signals
from .workflow import apply_overrides


def compute_scores(job: SetJob) -> dict:
    """The set's scores (glimpse.consistency) for the manifest; a failure is recorded, never fatal to the run."""
    try:
        from ..score import score_folders  # torch: only once a set is complete

        t0 = time.monotonic()
        # the enhanced views against the set they came from, exactly as `glimpse-enhance score` scores them
        scores = score_folders(job.out_dir, job.folder)
        scores.pop("pairs", None)  # per-pair details stay out of the manifest; per_view keeps the per-view means
        scores["seconds"] = round(time.monotonic() - t0, 3)
        return scores
    except Exception as e:  # scoring is a report: the views are on disk either way
        return {"error": f"{type(e).__name__}: {e}"}


class Runner:
    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.out = Path(opts.out)
        self.timing = Timing()
        self.stop = opts.stop or threading.Event()
        self.fatal: list[BaseException] = []
        self.progress: Progress | None = None
        self.plan = prepare(opts)  # RunError (exit 2) on bad input, before any server
        self.jobs: list[SetJob] = self.plan.jobs
        self.mode = self.plan.mode
        self.chunk = self.plan.chunk

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
            values = {"image": f"{job.input_subfolder}/{job.image_name(views[0])}",
                      "filename_prefix": f"{job.output_subfolder}/{view_name(views[0])}"}
        return apply_overrides(job.workflow, values)[0]

    def _collect(self, client: ComfyClient, job: SetJob, views: list[int], history: dict) -> int:
        """Write the outputs of the views still missing (anchors sampled again for another server's record are
        finished already and stay as they are); return how many were written."""
        per_view, lacking = outputs_by_view(history, views)
        if lacking:
            listed = ", ".join(sorted(it["filename"] for it in output_files(history))) or "none"
            raise RunError(f"the workflow's outputs lack {', '.join(f'{view_name(v)}.png' for v in lacking)} "
                           f"(files listed by the server: {listed}); is SaveViewSet in the workflow?")
        with job.lock:
            todo = [v for v in views if v in job.manifest["missing_views"]]
        for v in todo:
            for name, it in per_view[v].items():
                atomic_write_bytes(job.out_dir / name, client.view(it["filename"], it.get("subfolder", ""), "output"))
        facts = None
        if todo and self.mode == "set" and (job.anchors or not job.manifest.get("workflow_facts")):
            facts = result_facts(client, per_view[views[0]][f"{view_name(views[0])}.png"].get("subfolder", ""))
        cross = (facts or {}).pop("cross_view", None) or {}
        with job.lock:
            for v in todo:
                anchors = (cross.get("view_anchors") or {}).get(str(v))
                mf.record(job.manifest, v, job.params, list(per_view[v]), server=client.url,
                          **({"anchors": anchors} if anchors is not None else {}))
            if cross:
                job.manifest["cross_view"] = {k: x for k, x in cross.items() if k != "view_anchors"}
            if facts and not job.manifest.get("workflow_facts"):
                job.manifest["workflow_facts"] = facts
            mf.save(job.manifest, job.out_dir)
        return len(todo)

    def _run_chunk(self, client: ComfyClient, job: SetJob, views: list[int]) -> None:
        if job.anchors and views != job.anchors and client.url not in job.recorded:
            # this server has not sampled the set's anchors in this run: their record, which every other view
            # attends to, lives in the server's process (and a rerun starts a new one), so sample them here first
            self._run_prompt(client, job, job.anchors)
        self._run_prompt(client, job, views)

    def _run_prompt(self, client: ComfyClient, job: SetJob, views: list[int]) -> None:
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
        if views == job.anchors:
            with job.lock:
                job.recorded.add(client.url)
        written = self._collect(client, job, views, history)
        t_end = time.monotonic()
        self.timing.count_executed(ran)
        self.timing.add(queue_s=t_q.get("queued", t_start) - t_start, collect_s=t_end - t_done,
                        server_s=server_seconds(history), wall_s=t_end - t_start, views=written)
        self.progress.views_done(written, f"{label} on {client.url}" + ("" if written else " (anchors' record)"))

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
        self.progress.message(f"{len(clients)} server(s), {self.chunk} view(s) per prompt")
        work = WorkPool()
        for job in self.jobs:
            missing = job.manifest["missing_views"]
            if set(job.anchors) & set(missing):
                work.put((job, list(job.anchors)))  # all of them: they are sampled together
            for views in chunk_views([v for v in missing if v not in job.anchors], self.chunk):
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
        if self.stop.is_set():  # set by the caller (opts.stop): the workers set it only with a fatal error
            raise KeyboardInterrupt
        if not work.empty():
            raise RunError("every server was lost before the run finished")

    def finish_scores(self) -> None:
        for job in self.jobs:
            if job.manifest["complete"] and job.manifest.get("scores") is None:
                job.manifest["scores"] = compute_scores(job)
            job.manifest["timing"] = self.timing.as_dict()
            mf.save(job.manifest, job.out_dir)

    def leftovers(self, embedded_url: str | None) -> list[str]:
        """Where this run's files stay on servers it does not own (ComfyUI has no route to delete them)."""
        lines = []
        for url in sorted({u for j in self.jobs for u in j.uploaded} - {embedded_url}):
            jobs = [j for j in self.jobs if url in j.uploaded]
            lines.append(f"note: files of this run stay on {url}: inputs in input/"
                         f"{', input/'.join(sorted({j.input_subfolder for j in jobs}))}, results in output/"
                         f"{', output/'.join(sorted({j.output_subfolder for j in jobs}))} (ComfyUI has no route to "
                         "delete them; remove those folders on the server to reclaim the space)")
        return lines


def run(opts: RunOptions) -> int:
    """Run and report on ``opts.stream`` (stderr); returns the exit status."""
    with stop_on_signals():
        return _run(opts)


def _run(opts: RunOptions) -> int:
    stream = opts.stream or sys.stderr
    r = None

    def say(s: str) -> None:
        if r is not None and r.progress:
            r.progress.message(s)
        else:
            stream.write(s + "\n")
            stream.flush()

    try:
        r = Runner(opts)
    except RunError as e:
        say(f"error: {e}")
        return e.code
    except KeyboardInterrupt as e:
        return exit_code(e)
    total = sum(len(j.views) for j in r.jobs)
    todo = sum(len(j.manifest["missing_views"]) for j in r.jobs)
    r.progress = Progress(total, total - todo, stream, opts.tty)
    embedded = None
    code = 0
    t0 = time.monotonic()
    try:
        say(f"workflow {r.plan.workflow_path} ({r.mode} mode); {len(r.jobs)} set(s), {total} views, "
            f"{total - todo} already done (skipped), {todo} to run")
        for line in [f"  override {a}" for a in r.plan.applied] + r.plan.notes:
            say(line)
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
    except KeyboardInterrupt as e:
        code = exit_code(e)
    finally:
        ignore_signals()  # what follows is bounded and must not be cut short
        if embedded is not None:
            embedded.stop()
        for job in r.jobs:
            with job.lock:
                mf.save(job.manifest, job.out_dir)
        r.progress.close()
    for line in r.leftovers(embedded.url if embedded else None):
        say(line)
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

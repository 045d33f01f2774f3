"""``glimpse-enhance fleet``: many view sets over many ComfyUI servers, one Ray actor per server.

The driver (this module) connects to Ray (``--address``), starts ``--servers-per-node`` actors on every node
(``fleet_actor.ServerWorker``, each holding ``--gpus-per-server`` GPUs and starting its own embedded ComfyUI, or
attaching to ``--attach URL`` on its node), and hands each free server the next view set (``fleet_plan``). A set runs
end to end on one server through ``run.run``. The driver polls each busy server about once a second: the views it
finished come back (their files, unless ``--shared-fs``) and are written into OUT_DIR/<set> with the manifest, so
OUT_DIR is always a valid resume point for ``run`` and for the fleet.

Faults: an actor that dies (its process, or its node) or whose ComfyUI dies costs at most the views of its set
finished since the last poll; the set goes to another server with what OUT_DIR/<set> holds (``--retries`` times at
most). A lost ComfyUI is restarted by its actor (``--retries`` times), a dead actor is replaced (as many times as
there were servers at the start). Ctrl-C stops every set (prompts in flight are interrupted), keeps every finished
view and exits 130; the same command resumes, passing over the sets OUT_DIR already holds in full.
Exit status: 0 every set done, 1 a set failed, 2 bad arguments (or no Ray), 130 interrupted.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import fleet_plan as fp
from . import manifest as mf
from .fleet_actor import ServerWorker, pack_inputs, pack_outputs, write_outputs
from .prepare import USER_OPTIONS, RunError, RunOptions, check_apart, check_writable
from .viewset import ViewSetError, is_viewset
from .workflow import OverrideError, WorkflowError, apply_overrides, load_workflow, resolve_workflow, workflow_mode

POLL_S = 1.0
CANCEL_TIMEOUT_S = 60.0
NO_RAY = "glimpse-enhance fleet needs Ray, an optional extra: pip install 'glimpse-enhance[fleet]'"


@dataclass
class FleetOptions:
    run: RunOptions  # viewset: SETS_DIR, out: OUT_DIR; workflow, overrides, chunk, models_dir, cpu, comfy_args
    address: str | None = None  # None: $RAY_ADDRESS, else a new local Ray; "auto", "local", "ray://HOST:PORT"
    gpus_per_server: float | None = None  # None: 1 when the cluster has GPUs, else 0
    servers_per_node: int | None = None  # None: the node's GPUs / gpus_per_server, at least 1
    attach: str | None = None
    shared_fs: bool = False
    retries: int = 2


class Server:
    """The driver's view of one actor: its handle, the one call in flight, the set it runs."""

    def __init__(self, handle, label: str):
        self.handle, self.label = handle, label
        self.ref = None
        self.call = ""  # start | restart | begin | poll
        self.task: fp.SetTask | None = None
        self.prior: set[str] = set()  # views OUT_DIR held when the set was handed over
        self.seen: set[str] = set()  # views counted in the progress
        self.restarts = 0
        self.info: dict = {}


class Fleet:
    def __init__(self, ray, opts: FleetOptions, say):
        self.ray, self.opts, self.say = ray, opts, say
        o = opts.run
        self.out = Path(o.out)
        self.user = {k: o.overrides.get(k) for k in USER_OPTIONS}
        self.workflow_path = resolve_workflow(o.workflow)
        self.base = load_workflow(self.workflow_path)
        apply_overrides(self.base, self.user, str(self.workflow_path))  # a bad override fails here, once
        self.images_only = workflow_mode(self.base) == "per-view"  # what run's scan of a set checks
        self.workflow_text = self.workflow_path.read_text(encoding="utf-8")
        if is_viewset(Path(o.viewset)):
            raise ViewSetError(f"{o.viewset} is a view set; fleet takes a folder of view sets (run takes one set)")
        check_writable(self.out)
        self.sched = fp.Scheduler(fp.SetSource(Path(o.viewset)), opts.retries)
        self.report = fp.FleetReport(self.out, sets_dir=str(Path(o.viewset).resolve()),
                                     workflow=str(self.workflow_path), shared_fs=opts.shared_fs)
        self.servers: list[Server] = []
        self.started = 0  # actors started, replacements included
        self.stopping = False
        self.clock = False

    # -- servers ------------------------------------------------------------------------------------------------
    def start_servers(self) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cluster_gpus = self.ray.cluster_resources().get("GPU", 0)
        gpus = self.opts.gpus_per_server if self.opts.gpus_per_server is not None else (1 if cluster_gpus else 0)
        o = self.opts.run
        actor = self.ray.remote(ServerWorker)
        args = (self.opts.attach, str(o.models_dir) if o.models_dir else None, o.cpu, o.comfy_args)
        self.make_actor = lambda **kw: actor.options(num_gpus=gpus, max_restarts=0, **kw).remote(*args)
        nodes = [n for n in self.ray.nodes() if n.get("Alive")]
        for node in nodes:
            per_node = self.opts.servers_per_node or (max(1, int(node["Resources"].get("GPU", 0) // gpus))
                                                      if gpus else 1)
            for _ in range(per_node):
                self._add(self.make_actor(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], False)))
        self.initial = len(self.servers)
        self.say(f"{self.initial} server(s) on {len(nodes)} node(s), {gpus:g} GPU(s) each"
                 + ("" if cluster_gpus else " (the cluster has no GPU: ComfyUI runs on the CPU)"))

    def _add(self, handle) -> None:
        s = Server(handle, f"server{self.started}")
        self.started += 1
        self.servers.append(s)
        self._call(s, "start")

    def _call(self, s: Server, method: str, *args) -> None:
        s.call, s.ref = method, getattr(s.handle, method).remote(*args)

    @staticmethod
    def _idle(s: Server) -> None:
        s.call, s.ref = "", None  # the next _wait hands it a set

    def _retire(self, s: Server, why: str) -> None:
        self.servers.remove(s)
        self.progress.message(f"{s.label} ({s.info.get('url', 'not started')}) leaves the fleet: {why}")
        self.ray.kill(s.handle, no_restart=True)

    # -- sets ---------------------------------------------------------------------------------------------------
    def _dispatch(self, s: Server) -> None:
        others = any(o is not s and o.info for o in self.servers)
        while (task := self.sched.next_for(s.label, others)) is not None:
            out_dir = self.out / task.name
            if task.attempts == 1 and fp.set_finished(task.folder, out_dir, self.base, self.user, self.images_only):
                self.report.set(task.name, status=fp.DONE, skipped=True, error=None)
                self.progress.sets_done += 1
                self.progress.message(f"{task.name}: finished in an earlier run, skipped")
                continue
            try:  # run's own checks, here so that a bad set never travels: errors name the driver's files
                check_apart(task.folder, out_dir)
                check_writable(out_dir)
                job = self.make_job(task, out_dir)
            except (RunError, ViewSetError, OSError) as e:
                self._finish(s, task, fp.BAD_INPUT, str(e), 0.0)
                continue
            if not self.clock:  # s/view and sets/h count from the first set, not from the servers' start
                self.clock = True
                self.progress.start()
            s.task, s.prior, s.seen = task, set(mf.load(out_dir).get("views", {})), set()
            self.report.set(task.name, status=fp.RUNNING, attempts=task.attempts, server=s.label, skipped=False)
            self.report.save(force=False)
            self._call(s, "begin", job)
            return

    def make_job(self, task: fp.SetTask, out_dir: Path) -> dict:
        """What ServerWorker.begin needs: the set's name and run options, and its files or its shared paths."""
        job = {"name": task.name, "overrides": self.user, "chunk": self.opts.run.chunk,
               "paths": {"set": str(task.folder), "out": str(out_dir), "workflow": str(self.workflow_path)}}
        if self.opts.shared_fs:
            job["shared"] = {"viewset": str(task.folder.resolve()), "out": str(out_dir.resolve()),
                             "workflow": str(self.workflow_path.resolve())}
        else:
            job.update(inputs=pack_inputs(task.folder, self.images_only), outputs=pack_outputs(out_dir),
                       workflow_text=self.workflow_text)
        return job

    def _count_views(self, s: Server, manifest: dict) -> None:
        task, views = s.task, set(manifest.get("views", {}))
        p = self.progress
        with p.lock:
            if not task.counted:  # the set's first manifest: its views join the total, the kept ones as skipped
                task.counted = True
                kept = views & s.prior
                p.total += manifest.get("view_count", 0)
                p.done += len(kept)
                p.skipped += len(kept)
                s.seen |= kept
        new = views - s.seen - s.prior
        if new:
            s.seen |= new
            self.report.server(s.label)["views"] += len(new)
            p.views_done(len(new), f"{task.name} on {s.label}")

    def _polled(self, s: Server, res: dict) -> None:
        task = s.task
        if res["manifest"]:
            if not self.opts.shared_fs:
                write_outputs(self.out / task.name, res["files"], res["manifest"], task.folder,
                              str(self.workflow_path))
            self._count_views(s, res["manifest"])
        if not res["done"]:
            self._call(s, "poll", POLL_S)
            return
        stats = self.report.server(s.label)
        stats["busy_s"] += res["seconds"]
        if res["outcome"] != fp.SERVER_LOST:
            stats["sets"] += res["outcome"] == fp.DONE
            self._finish(s, task, res["outcome"], res["error"], res["seconds"])
            self._idle(s)
            return
        self._lost(s, f"the ComfyUI of {s.label} was lost ({res['error']})", res["seconds"])
        if self.stopping:
            self._idle(s)
        elif s.restarts < self.opts.retries:
            s.restarts += 1
            self.progress.message(f"{s.label}: restarting its ComfyUI")
            self._call(s, "restart")
        else:
            self._retire(s, f"its ComfyUI was lost {s.restarts + 1} times")

    def _finish(self, s: Server, task: fp.SetTask, status: str, error: str | None, seconds: float) -> None:
        before = self.report.sets.get(task.name, {}).get("seconds", 0.0) if task.attempts > 1 else 0.0
        self.report.set(task.name, status=status, error=error, server=s.label, attempts=task.attempts,
                        seconds=round(before + seconds, 3))
        if s.task is task:
            s.task = None
        if status == fp.DONE:
            self.progress.sets_done += 1
            self.progress.sets_run += 1
            self.progress.message(f"{task.name}: done on {s.label} in {seconds:.1f} s")
        elif status != fp.INTERRUPTED:
            self.progress.sets_failed += 1
            self.progress.message(f"{task.name}: {status.replace('_', ' ')} on {s.label}: {error}")
        self.report.save(force=False)

    def _lost(self, s: Server, why: str, seconds: float) -> None:
        """``s`` lost its set: retried elsewhere, or failed when its retries are spent."""
        task, s.task = s.task, None
        self.report.server(s.label)["lost_sets"] += 1
        before = self.report.sets.get(task.name, {}).get("seconds", 0.0)
        self.report.set(task.name, seconds=round(before + seconds, 3), error=why)
        if self.stopping:
            self.report.set(task.name, status=fp.INTERRUPTED)
        elif self.sched.lost(task, s.label):
            self.report.set(task.name, status=fp.PENDING)
            self.progress.message(f"{task.name}: {why}; its unfinished views go to another server")
        else:
            self._finish(s, task, fp.FAILED, f"{why} (given up after {task.attempts} attempts)", 0.0)
        self.report.save(force=False)

    def _died(self, s: Server, err: Exception) -> None:
        if s.task is not None:
            self._lost(s, f"{s.label} was lost: its actor died ({type(err).__name__})", 0.0)
        self._retire(s, f"its actor died ({type(err).__name__})")
        if not self.stopping and self.started < 2 * self.initial and self.sched.has_work():
            self._add(self.make_actor())  # a replacement, wherever Ray finds room for it

    # -- the loop -----------------------------------------------------------------------------------------------
    def _handle(self, s: Server) -> None:
        ray, call = self.ray, s.call
        try:
            res = ray.get(s.ref)
        except ray.exceptions.RayActorError as e:
            self._died(s, e)
            return
        except ray.exceptions.RayTaskError as e:  # start, restart or begin raised inside the actor
            cause = getattr(e, "cause", None) or e
            if call != "begin":
                self._retire(s, f"{type(cause).__name__}: {cause}")
                return
            self._finish(s, s.task, fp.FAILED, f"{type(cause).__name__}: {cause}", 0.0)
            self._idle(s)
            return
        if call in ("start", "restart"):
            s.info = res
            self.report.server(s.label, **res)
            self.report.save(force=False)
            self.progress.message(f"{s.label}: ComfyUI at {res['url']} on {res['host']}")
            self._idle(s)
        elif call == "begin":
            self._call(s, "poll", POLL_S)
        else:
            self._polled(s, res)

    def _wait(self) -> bool:
        """Handle what the busy servers answered within POLL_S; False when none is busy."""
        if not self.stopping:
            for s in [s for s in self.servers if s.info and s.ref is None]:
                self._dispatch(s)
        self.progress.sets_total = self.sched.source.total
        busy = [s for s in self.servers if s.ref is not None]
        if not busy:
            return False
        ready, _ = self.ray.wait([s.ref for s in busy], num_returns=1, timeout=POLL_S)
        for ref in ready:
            self._handle(next(s for s in busy if s.ref is ref))
        self.progress.running = sum(s.task is not None for s in self.servers)
        self.progress.step_update("")
        self.report.save(force=False)
        return True

    def cancel(self) -> None:
        """Ctrl-C: no new sets; every running set is stopped and what it finished is collected."""
        self.stopping = True
        self.progress.message("interrupted: stopping the sets in flight (Ctrl-C again to leave at once) ...")
        for s in self.servers:
            if s.task is not None:
                s.handle.cancel.remote()
            elif s.call in ("start", "restart"):
                s.ref = None  # no set to save: leave it starting
        deadline = time.monotonic() + CANCEL_TIMEOUT_S
        while time.monotonic() < deadline and self._wait():
            pass
        for s in self.servers:
            if s.task is not None:
                self.report.set(s.task.name, status=fp.INTERRUPTED)

    def run(self, stream, tty) -> int:
        self.progress = fp.FleetProgress(self.sched.source.total, stream, tty)
        try:
            self.start_servers()
            while self._wait():
                pass
        except KeyboardInterrupt:
            self.cancel()
            return 130
        finally:
            self.sets_s = time.monotonic() - self.progress.t0  # first set to last, servers' start and stop left out
            self.report.save()
            self.shutdown()
        if self.sched.has_work():
            self.say("error: every server left the fleet before it finished; rerun the same command to resume")
            return 1
        return 0 if all(e["status"] == fp.DONE for e in self.report.sets.values()) else 1

    def shutdown(self) -> None:
        stops = [s.handle.stop.remote() for s in self.servers]
        try:
            if stops:
                self.ray.wait(stops, num_returns=len(stops), timeout=60)
        finally:
            for s in self.servers:
                self.ray.kill(s.handle, no_restart=True)
            self.progress.close()


def _init_ray(ray, address: str | None) -> bool:
    """Connect to Ray; True when this call started a local instance (which the fleet shuts down at the end)."""
    local = address == "local" or (address is None and not os.environ.get("RAY_ADDRESS"))
    kw = {}
    if local:  # the actors import this checkout's glimpse, as the driver does (workers do not get its sys.path)
        root = str(Path(__file__).resolve().parents[2])
        kw = {"include_dashboard": False,
              "runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(
                  p for p in (root, os.environ.get("PYTHONPATH")) if p)}}}
    ray.init(address=address, log_to_driver=False, **kw)
    return local


def fleet(opts: FleetOptions) -> int:
    """Run the fleet and report on ``opts.run.stream`` (stderr); returns the exit status."""
    stream = opts.run.stream or sys.stderr

    def say(s: str) -> None:
        stream.write(s + "\n")
        stream.flush()

    try:
        import ray
    except ImportError:
        say(f"error: {NO_RAY}")
        return 2
    try:
        f = Fleet(ray, opts, say)
    except (WorkflowError, OverrideError, ViewSetError, RunError, OSError) as e:
        say(f"error: {e}")
        return 2
    t0 = time.monotonic()
    try:
        local = _init_ray(ray, opts.address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        say(f"error: cannot connect to Ray at {opts.address or 'a new local instance'}: {e}")
        return 2
    try:
        code = f.run(stream, opts.run.tty)
    except KeyboardInterrupt:
        code = 130
    finally:
        if local:
            ray.shutdown()
    counts = f.report.counts()
    say(f"fleet: {', '.join(f'{n} {k}' for k, n in sorted(counts.items()))} in {time.monotonic() - t0:.1f} s "
        f"-> {f.report.path}")
    if getattr(f, "sets_s", 0) and f.progress.sets_run:
        say(f"  {f.progress.sets_run} set(s) run in {f.sets_s:.1f} s from the first set on: "
            f"{3600 * f.progress.sets_run / f.sets_s:.1f} sets/h")
    for label, s in f.report.servers.items():
        say(fp.throughput_line(label, s))
    if code == 130:
        say("interrupted: rerun the same command to resume (finished views are kept)")
    return code

"""CPU threads for the per-pixel passes of the load, the hint, the blend and the scores.

Those passes are long chains of memory-bound elementwise ops. On a CPU that other processes keep busy, torch's
intra-op thread pool waits at every op for a worker that is not scheduled: on the project's shared 2-core machine the
16-view 1024 px blend took 1.5-3 s with 2 threads and 1.0-1.2 s with 1 (CPU time 0.7-0.8 s). Elementwise passes
gain little from more threads even on an idle machine, so they run single-threaded; the previous setting is restored
afterwards. Tensors on a GPU are unaffected.

The views of a set are independent, though: :func:`map_views` runs one single-threaded task per view on a few
Python threads (torch and numpy release the GIL in their loops). Workers take the next view when they finish one and
never wait for each other inside an op, so a core that another process holds slows the set down by its share only;
each view's values are computed exactly as in a serial loop.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, TypeVar

import torch

MAX_VIEW_THREADS = 4  # per-view work is memory-bound: more threads than this only share the memory bandwidth
# Views per task of a whole-batch pass at the blend's working size: four 512 px float maps (4 MiB) and their
# temporaries stay in a CPU's L2/L3 caches through a chain of elementwise ops, where the 16-view batch (16 MiB per
# map) streams from memory at every op; on the project's 2-core machine the confidence weights took a third less CPU
# time in groups of 2-4 views than as one batch.
VIEWS_PER_GROUP = 4

T = TypeVar("T")
R = TypeVar("R")
_worker = threading.local()


@contextmanager
def single_threaded(device: torch.device | str | None = None):
    """Run torch's CPU ops with one intra-op thread inside the block (a no-op for GPU work)."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def view_threads() -> int:
    """Threads for per-view work: the CPUs this process may run on, at most :data:`MAX_VIEW_THREADS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_VIEW_THREADS, cpus))


def view_groups(n: int, device: torch.device | str | None = None) -> list[slice]:
    """Consecutive slices of at most :data:`VIEWS_PER_GROUP` of ``n`` views for :func:`map_views` (CPU); one slice
    of all of them for GPU work, where a batch is one kernel launch per op."""
    if device is not None and torch.device(device).type != "cpu":
        return [slice(0, n)]
    return [slice(start, min(n, start + VIEWS_PER_GROUP)) for start in range(0, n, VIEWS_PER_GROUP)]


def map_views(fn: Callable[[T], R], items: Iterable[T], device: torch.device | str | None = None) -> list[R]:
    """``[fn(x) for x in items]`` with the calls spread over :func:`view_threads` threads, each running torch
    single-threaded, in the caller's grad and inference mode. The tasks must be independent (write distinct outputs);
    results come back in order. Runs serially for GPU work, for one item, and inside another map's task (the
    cores are already taken)."""
    items = list(items)
    workers = min(view_threads(), len(items))
    if workers <= 1 or getattr(_worker, "busy", False) or (device is not None and torch.device(device).type != "cpu"):
        return [fn(x) for x in items]
    inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

    def run(x: T) -> R:
        _worker.busy = True
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return fn(x)

    # a new thread takes torch's thread count at its first op: single_threaded makes that 1 for the workers
    with single_threaded(), ThreadPoolExecutor(max_workers=workers, thread_name_prefix="glimpse-view") as pool:
        return list(pool.map(run, items))

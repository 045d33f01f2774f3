"""CPU thread count for the per-pixel passes of the blend and the scores.

Those passes are long chains of memory-bound elementwise ops. On a CPU that other processes keep busy, torch's
intra-op thread pool waits at every op for a worker that is not scheduled: on the project's shared 2-core machine the
16-view 1024 px blend took 1.5-3 s with 2 threads and 1.0-1.2 s with 1 (CPU time 0.7-0.8 s). Elementwise passes
gain little from more threads even on an idle machine, so they run single-threaded; the previous setting is restored
afterwards. Tensors on a GPU are unaffected.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


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

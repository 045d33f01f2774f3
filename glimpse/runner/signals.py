"""Stopping a run cleanly on SIGINT (Ctrl-C) and SIGTERM, whatever the disposition the runner inherited.

A job started in the background by a non-interactive shell inherits SIGINT as *ignored*, and Python then never turns
Ctrl-C into KeyboardInterrupt; SIGTERM's default ends the process without running any ``finally``. While a run is on,
both raise :class:`Stopped` (a KeyboardInterrupt) in the main thread instead, so the manifest is saved, an embedded
server is stopped and its temporary folder removed, and the exit status is 128 + the signal number (130, 143). Later
signals are ignored until the block ends, so that cleanup (bounded: at most about 30 s) is not cut short.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def code(self) -> int:
        return 128 + self.signum


def exit_code(e: KeyboardInterrupt) -> int:
    return e.code if isinstance(e, Stopped) else 128 + signal.SIGINT


def ignore_signals() -> None:
    """From here to the end of the block, SIGINT and SIGTERM are ignored (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def _raise(signum, _frame):
    ignore_signals()  # once: the cleanup that follows (manifest, server) is bounded and must not be cut short
    raise Stopped(signum)


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise :class:`Stopped` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)

"""Progress on stderr: views done/total, seconds per view, ETA, and the sampler step of the chunk in flight.

On a terminal one line is redrawn in place; otherwise (a log file, CI) one plain line is written per event worth
keeping (chunk started, view finished, server lost), never per sampler step, so logs stay short.
"""
from __future__ import annotations

import sys
import threading
import time


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, done: int = 0, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.done, self.skipped = total, done, done
        self.t0 = time.monotonic()
        self.step = ""
        self.lock = threading.Lock()
        self._drawn = False

    def start(self) -> None:
        """Start the clock (s/view and ETA count from the first queued chunk, not from the server start)."""
        with self.lock:
            self.t0 = time.monotonic()

    def seconds_per_view(self) -> float | None:
        new = self.done - self.skipped
        return (time.monotonic() - self.t0) / new if new > 0 else None

    def line(self) -> str:
        spv = self.seconds_per_view()
        eta = spv * (self.total - self.done) if spv is not None else None
        spv_s = f"{spv:.1f} s/view" if spv is not None else "- s/view"
        elapsed = _fmt_s(time.monotonic() - self.t0)
        return (f"views {self.done}/{self.total}  {spv_s}  ETA {_fmt_s(eta)}  elapsed {elapsed}"
                + (f"  [{self.step}]" if self.step else ""))

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + self.line())
            self._drawn = True
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (both modes)."""
        with self.lock:
            if self.tty and self._drawn:
                self.stream.write("\r\x1b[K")
            self.stream.write(text + "\n")
            self._drawn = False
            self._draw()

    def step_update(self, text: str) -> None:
        with self.lock:
            self.step = text
            if self.tty:
                self._draw()

    def views_done(self, n: int, where: str = "") -> None:
        with self.lock:
            self.done += n
            self.step = ""
            if not self.tty:
                self.stream.write(self.line() + (f"  ({where})" if where else "") + "\n")
            self._draw()

    def close(self) -> None:
        with self.lock:
            if self.tty and self._drawn:
                self.stream.write("\n")
                self._drawn = False
            self.stream.flush()

"""Progress on stderr: a one-line bar with an estimate of the time left on a terminal, plain lines
(one per finished row) otherwise, so logs and CI output stay readable. Hand-written: a bar and an
ETA are a dozen lines, not worth a dependency."""
from __future__ import annotations

import sys
import time


def fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    def __init__(self, total_steps: int, estimate_s: float, stream=None, enabled: bool = True,
                 prefix: str = "", bar: bool = True):
        self.prefix = prefix       # before every line ("rank 1 of 2 (host): " under torchrun)
        self.total = max(total_steps, 1)
        self.done = 0
        self.estimate = estimate_s
        self.stream = stream or sys.stderr
        self.tty = bar and enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.rows = 0

    def left_s(self) -> float:
        el = time.perf_counter() - self.t0
        if self.done == 0:
            return self.estimate
        # blend the up-front estimate with the observed rate as the run goes on
        w = self.done / self.total
        observed = el / self.done * (self.total - self.done)
        planned = self.estimate * (1 - w)
        return w * observed + (1 - w) * planned

    def advance(self, what: str) -> None:
        self.done = min(self.done + 1, self.total)
        if not self.tty:
            return
        width = 24
        fill = int(width * self.done / self.total)
        line = (f"\r{self.prefix}[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                f"~{fmt_s(self.left_s())} left  {what}")
        cols = 100
        self.stream.write(line[:cols].ljust(cols))
        self.stream.flush()

    def note_row(self, label: str, results, seconds: float) -> None:
        self.rows += 1
        if not self.enabled or self.tty:
            return
        bad = [r for r in results if r.status == "failed"]
        status = f"FAILED ({', '.join(sorted({r.impl for r in bad}))})" if bad else "ok"
        self.stream.write(f"{self.prefix}[{self.done}/{self.total}] {label}: {status} in "
                          f"{seconds:.1f}s, "
                          f"~{fmt_s(self.left_s())} left\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()

"""Interleaved timing of several implementations of one workload.

Method (why): the machine is shared and noisy, so absolute times drift; a ratio is only
meaningful when both sides see the same drift. Implementations are therefore timed in
alternating blocks (A B A B ..., the order flipped every round so neither always goes first),
each sample is the mean over enough back-to-back calls to last >= `min_sample_s` (so the timer's
resolution and call jitter do not dominate microsecond kernels), and we report the median and
p20/p80 of the samples. Warm-up is sized by time, not count: each implementation runs until
`warmup_s` has passed (and at least 3 calls), which also faults in any fresh allocations.
Sampling stops when every implementation has `min_samples` and the spread (p80-p20)/median is
under `target_spread`, or when the time budget is spent; rows that end noisier than
`noisy_spread` are flagged (torch.utils.benchmark warns at IQR/median > 10%).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Stats:
    median: float
    p20: float
    p80: float
    samples: int
    calls_per_sample: int

    @property
    def spread(self) -> float:
        return (self.p80 - self.p20) / self.median if self.median > 0 else 0.0


def _quantile(xs, q):
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def _stats(xs, n):
    return Stats(statistics.median(xs), _quantile(xs, 0.2), _quantile(xs, 0.8), len(xs), n)


def time_interleaved(fns: dict[str, Callable[[], object]], *, sync: Callable[[], None] = lambda: None,
                     warmup_s: float = 0.05, min_sample_s: float = 2e-3, min_samples: int = 15,
                     max_samples: int = 400, target_spread: float = 0.05,
                     budget_s: float = 3.0, noisy_spread: float = 0.10) -> dict[str, Stats]:
    """Times each callable; returns name -> Stats of seconds per call."""
    per_call = {}
    for name, fn in fns.items():
        calls, t0 = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - t0 < warmup_s:
            fn()
            calls += 1
        sync()
        per_call[name] = (time.perf_counter() - t0) / calls
    reps = {k: max(1, int(min_sample_s / max(v, 1e-9))) for k, v in per_call.items()}
    samples = {k: [] for k in fns}
    names = list(fns)
    start = time.perf_counter()
    rnd = 0
    while True:
        order = names if rnd % 2 == 0 else names[::-1]
        for name in order:
            fn, n = fns[name], reps[name]
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t0) / n)
        rnd += 1
        if rnd >= max_samples:
            break
        if rnd >= min_samples:
            done = all(_stats(s, 1).spread <= target_spread for s in samples.values())
            if done or time.perf_counter() - start > budget_s:
                break
    return {k: _stats(v, reps[k]) for k, v in samples.items()}

"""Interleaved timing of several implementations of one workload.

Method (why; docs/benchmarks.md, "Timing method", says the same for users):
- The machine is shared and noisy, so absolute times drift; a ratio is only meaningful when both
  sides see the same drift. Implementations are timed in alternating blocks (A B A B ..., the
  order flipped every round so neither always goes first).
- CPU: each block starts with `rewarm_calls` (1) untimed call, so no sample pays for refilling
  the caches the other implementation's block evicted (measured: without it, each side was
  10-12% slower when it followed the other, and the per-round ratios of a 1.5 ms linear were
  bimodal).
- Each sample is the mean over enough back-to-back calls to last >= `min_sample_s`, so the timer's
  resolution and per-call jitter do not dominate microsecond kernels.
- Warm-up is sized by time, not count: each implementation runs for `warmup_s` and at least
  `warmup_calls` (3) calls (and at least as long as one sample), which also faults in fresh allocations and lets
  caches, clocks and torch's lazy initialisations settle.
- Paired ratios: with a `baseline` among the implementations, every round yields one ratio per
  other implementation, its sample over the baseline's sample of the same round (taken back to
  back, so drift slower than a round cancels). The estimate is the median of those per-round
  ratios with a distribution-free 95% confidence interval (order statistics; `median_interval`).
- Stopping: with a baseline, sampling stops when every implementation has `min_samples` samples
  and every ratio's interval is within +-`target_ratio` of its median; without one, nvbench's rule
  (every relative spread (p80-p20)/median under `target_spread`). Either way it stops when
  `budget_s` is spent or at `max_samples`. Sides noisier than NOISY_SPREAD are flagged
  (torch.utils.benchmark warns at IQR/median > 10%), and ratios wider than the target too.
- CUDA: each sample is bracketed by CUDA events on the current stream (no host timer inside the
  measurement); with `flush` (a callable that overwrites an L2-sized buffer) every sample is one
  call preceded by a flush outside the events, so each call starts with a cold L2.
- Per-implementation context managers (a CPU ISA switch, no_grad) are entered around each block,
  outside the timed region.
"""
from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Mapping

NOISY_SPREAD = 0.10


def _binomial_cdf_halves(n: int) -> list[float]:
    """P(B <= i) for B ~ Binomial(n, 1/2), i = 0..n."""
    out, acc = [], 0
    for i in range(n + 1):
        acc += math.comb(n, i)
        out.append(acc / 2 ** n)
    return out


@functools.lru_cache(maxsize=None)
def _interval_rank(n: int, confidence: float) -> int:
    """The largest j >= 1 with [x(j), x(n+1-j)] (1-based order statistics) covering the median
    with probability >= confidence; 0 when no such j exists (fewer than 6 values for 95%)."""
    cdf = _binomial_cdf_halves(n)
    j = 0
    while j + 1 <= n // 2 and 2 * cdf[j] <= 1 - confidence:
        j += 1
    return j


def median_interval(xs, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(median, lo, hi): the median of xs and a distribution-free confidence interval for it,
    the order statistics x(j) and x(n+1-j) whose binomial coverage is at least `confidence`.
    lo and hi are None when there are too few values for that coverage."""
    xs = sorted(xs)
    if not xs:
        raise ValueError("median_interval of an empty sequence")
    j = _interval_rank(len(xs), confidence)
    med = statistics.median(xs)
    return (med, xs[j - 1], xs[len(xs) - j]) if j else (med, None, None)


@dataclass
class Ratio:
    """An implementation's time over the baseline's: the median of the per-round ratios and its
    95% confidence interval (None when there were too few rounds), against the target
    half-width the sampling aimed for."""
    median: float
    lo: float | None
    hi: float | None
    rounds: int
    target: float

    @property
    def half_width(self) -> float:
        """The interval's larger distance from the median, relative to it (inf: no interval)."""
        if self.lo is None or self.hi is None or self.median <= 0:
            return math.inf
        return max(self.hi - self.median, self.median - self.lo) / self.median

    @property
    def wide(self) -> bool:
        return self.half_width > self.target

    def contains(self, value: float) -> bool:
        return self.lo is not None and self.hi is not None and self.lo <= value <= self.hi


def paired_ratio(xs, base, target: float) -> Ratio:
    """The Ratio of samples `xs` over `base`, paired round by round."""
    med, lo, hi = median_interval([x / b for x, b in zip(xs, base) if b > 0])
    return Ratio(med, lo, hi, len(xs), target)


@dataclass
class Stats:
    median: float          # seconds per call
    p20: float
    p80: float
    samples: int
    calls_per_sample: int
    # minor page faults per call during the timed samples (CPU; -1 when not measured): a call
    # that faults in fresh pages for its outputs is paying the allocator, not the kernel
    faults_per_call: float = -1.0
    # against the baseline of the same interleaved timing (None for the baseline itself, or
    # when there was none)
    ratio: Ratio | None = None

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative noise of the samples."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


def quantile(xs, q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of a non-empty sequence."""
    xs = sorted(xs)
    if not xs:
        raise ValueError("quantile of an empty sequence")
    i = q * (len(xs) - 1)
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def summarize(xs, calls_per_sample: int = 1, faults_per_call: float = -1.0) -> Stats:
    return Stats(statistics.median(xs), quantile(xs, 0.2), quantile(xs, 0.8), len(xs),
                 calls_per_sample, faults_per_call)


def _minor_faults() -> int:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return -1


@dataclass
class Budget:
    """How long to measure. `quick` is for smoke runs: numbers are indicative only."""
    warmup_s: float = 0.05
    min_sample_s: float = 2e-3
    min_samples: int = 15
    max_samples: int = 400
    target_spread: float = 0.03
    # stop when every ratio's 95% interval is within +-target_ratio of its median
    target_ratio: float = 0.02
    budget_s: float = 2.0
    # at least this many warm-up calls (a second-long model call needs one, not three)
    warmup_calls: int = 3
    # untimed calls at the start of every CPU block (0 where a sample is one call so long that
    # refilling caches is negligible and the extra call would double the run: bench.models)
    rewarm_calls: int = 1

    @classmethod
    def quick(cls) -> "Budget":
        return cls(warmup_s=0.01, min_sample_s=5e-4, min_samples=5, max_samples=40,
                   target_spread=0.10, target_ratio=0.05, budget_s=0.15)


class _HostTimer:
    def __init__(self, clock, rewarm_calls: int):
        self.clock = clock
        self.rewarm_calls = rewarm_calls

    def block(self, fn, n: int, flush) -> float:
        for _ in range(self.rewarm_calls):  # untimed: refill what the other block evicted
            fn()
        t0 = self.clock()
        for _ in range(n):
            fn()
        return (self.clock() - t0) / n


class _CudaTimer:
    def __init__(self):
        import torch
        self.start = torch.cuda.Event(enable_timing=True)
        self.end = torch.cuda.Event(enable_timing=True)

    def block(self, fn, n: int, flush) -> float:
        if flush is not None:
            flush()
        self.start.record()
        for _ in range(n):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) * 1e-3 / n


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, device: str = "cpu",
                     budget: Budget | None = None,
                     contexts: Mapping[str, Callable[[], ContextManager]] | None = None,
                     flush: Callable[[], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter,
                     baseline: str | None = None, label: str = "") -> dict[str, Stats]:
    """Times each callable (interleaved, see the module doc); returns name -> Stats of seconds
    per call, each with its Ratio to `baseline` when that is one of them. `clock` is injectable
    for tests of the stopping rule. On CUDA every timed block is an NVTX range named
    "`label` name" (so nsys / ncu can select a row)."""
    b = budget or Budget()
    contexts = contexts or {}
    cuda = device.startswith("cuda")
    if cuda:
        import torch
        sync = torch.cuda.synchronize
        timer = _CudaTimer()
    else:
        sync = lambda: None  # noqa: E731
        timer = _HostTimer(clock, b.rewarm_calls)
        flush = None  # an L2 flush is a GPU option; CPU caches are left as the workload leaves them
    names = list(fns)
    paired = baseline in fns and len(fns) > 1

    def ctx(name):
        return contexts[name]() if name in contexts else contextlib.nullcontext()

    def nvtx(name):
        return torch.cuda.nvtx.range(f"{label} {name}".strip()) if cuda else contextlib.nullcontext()

    per_call = {}
    for name in names:
        fn = fns[name]
        with ctx(name):
            calls, t0 = 0, clock()
            while calls < b.warmup_calls or clock() - t0 < b.warmup_s:
                fn()
                calls += 1
            sync()
            per_call[name] = (clock() - t0) / calls
            # a second warm-up as long as one sample when a sample is longer than the warm-up
            if per_call[name] < b.min_sample_s and b.min_sample_s > b.warmup_s:
                for _ in range(int(b.min_sample_s / max(per_call[name], 1e-9))):
                    fn()
                sync()
    # enough calls per sample to last min_sample_s (the 1e-6 absorbs rounding of the estimate)
    reps = {k: 1 if (cuda and flush is not None)
            else max(1, math.ceil(b.min_sample_s / max(v, 1e-9) - 1e-6))
            for k, v in per_call.items()}
    samples: dict[str, list[float]] = {k: [] for k in names}
    faults = {k: 0 for k in names}
    start = clock()
    rnd = 0
    while True:
        order = names if rnd % 2 == 0 else names[::-1]
        for name in order:
            with ctx(name):
                sync()
                f0 = _minor_faults()
                with nvtx(name):
                    samples[name].append(timer.block(fns[name], reps[name], flush))
                sync()
                faults[name] += _minor_faults() - f0
        rnd += 1
        if rnd >= b.max_samples:
            break
        if rnd >= b.min_samples:
            if paired:
                quiet = all(not r.wide for r in _ratios(samples, baseline, b).values())
            else:
                quiet = all(summarize(s).spread <= b.target_spread for s in samples.values())
            if quiet or clock() - start > b.budget_s:
                break
    ratios = _ratios(samples, baseline, b) if paired else {}
    calls = {k: reps[k] + (0 if cuda else b.rewarm_calls) for k in names}  # all that faulted
    out = {k: summarize(v, reps[k], -1.0 if cuda else faults[k] / (len(v) * calls[k]))
           for k, v in samples.items()}
    for k, r in ratios.items():
        out[k].ratio = r
    return out


def _ratios(samples: dict[str, list[float]], baseline: str, b: Budget) -> dict[str, Ratio]:
    base = samples[baseline]
    return {k: paired_ratio(v, base, b.target_ratio) for k, v in samples.items() if k != baseline}

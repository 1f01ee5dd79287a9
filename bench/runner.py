"""The run: for every (device, row), check every implementation, then time the passes, then check
again. No kernel knowledge: everything op-specific comes from the registry entry.

The gate (before any timing, per workload, implementation and device):
- forward and every gradient on `seeds` (>= 3) seeded inputs against torch float32 and float64,
  by the registry's tolerance rule (dlkern.testing: elementwise bound k x torch's own error,
  relative-L2 bound, NaN/inf positions exact, outputs that are mostly zeros where torch's are not
  refused, inputs left unchanged);
- an implementation that fails is not timed; its rows are FAILED with the error, where it
  occurred, and the seed;
- each implementation is timed on its own copy of the inputs; after the timing loops the inputs
  must be unchanged and the check is run again (a kernel right once and wrong later fails then).
"""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import torch

from dlkern import testing
from dlkern.registry import OpSpec

from . import impls as impls_mod
from .timing import Budget, Stats, time_interleaved
from .workloads import Row

PASSES = ("forward", "backward", "total", "inference")
DEFAULT_PASSES = ("forward", "backward", "total")
PASS_TITLES = {"forward": "Forward Pass", "backward": "Backward Pass", "total": "Total Time",
               "inference": "Inference"}


@dataclass
class Result:
    """One (row, device, implementation, pass)."""
    row: Row
    device: str
    impl: str
    label: str
    pass_: str
    status: str                    # "ok" | "failed" | "skipped"
    stats: Stats | None = None
    flops: float = 0.0
    bytes: float = 0.0
    detail: str = ""

    @property
    def median(self) -> float | None:
        return self.stats.median if self.stats else None


@dataclass
class Config:
    impls: list[str]
    passes: list[str] = field(default_factory=lambda: list(DEFAULT_PASSES))
    budget: Budget = field(default_factory=Budget)
    seeds: tuple[int, ...] = (0, 1, 2)
    flush_l2: bool = False
    keep_going: bool = False


def work(spec: OpSpec, params, pass_: str) -> tuple[float, float]:
    """(FLOPs, bytes) of one call of `pass_`, from the registry's model."""
    f, b = spec.flops(params), spec.bytes(params)
    if pass_ == "backward":
        return f.get("backward", 0), b.get("backward", 0)
    if pass_ == "total":
        return f.get("forward", 0) + f.get("backward", 0), b.get("forward", 0) + b.get("backward", 0)
    return f.get("forward", 0), b.get("forward", 0)


# ---- the gate ------------------------------------------------------------------------------

def gate(spec: OpSpec, case, device: str, impl: impls_mod.Impl,
         seeds=(0, 1, 2), when: str = "") -> str | None:
    """None when `impl` passes on every seed, else what failed (seed, check, error, where)."""
    for seed in seeds:
        try:
            with impl.context():
                verdicts = testing.check(spec, case, device, seed, fn=impl.fn)
        except Exception as e:  # a kernel that raises is a failed check, not a harness crash
            return f"{when}seed {seed}: raised {type(e).__name__}: {e}"
        bad = [v for v in verdicts if not v.ok]
        if bad:
            return f"{when}seed {seed}: " + "; ".join(map(str, bad))
    return None


# ---- timed callables -----------------------------------------------------------------------

def _callable(spec: OpSpec, impl: impls_mod.Impl, inputs, pass_: str, device: str
              ) -> tuple[Callable[[], object], Callable[[], contextlib.AbstractContextManager]]:
    """The function one timed call runs for `pass_`, and the context its blocks run in."""
    fn = impl.fn
    names = list(inputs.grad)
    if pass_ == "inference":
        kw = dict(inputs.kwargs)
        if spec.eval_kwargs:
            kw = spec.eval_kwargs(kw)
        return (lambda: fn(**kw)), no_grad_context(impl)
    kwg = testing.leaf_kwargs(inputs)
    wrt = [kwg[n] for n in names]
    if pass_ == "forward":
        return (lambda: fn(**kwg)), impl.context
    g = torch.Generator().manual_seed(1234)
    with impl.context():
        probe = fn(**kwg)
    go = torch.randn(probe.shape, generator=g).to(device)
    if pass_ == "backward":
        # the forward ran once, outside the timed region; backward reruns over the kept graph
        out = probe
        return (lambda: torch.autograd.grad(out, wrt, go, retain_graph=True)), impl.context
    del probe
    return (lambda: torch.autograd.grad(fn(**kwg), wrt, go)), impl.context


def no_grad_context(impl) -> Callable[[], contextlib.AbstractContextManager]:
    """The context of an Inference block: the implementation's own, under torch.no_grad()."""
    def ctx():
        stack = contextlib.ExitStack()
        stack.enter_context(impl.context())
        stack.enter_context(torch.no_grad())
        return stack
    return ctx


# ---- the skeleton both command lines share (bench.layers rows, bench.models models) ---------

def time_passes(names, passes, make, device: str, budget: Budget, tick, flush=None,
                traceback_lines: int = 3, baseline: str | None = impls_mod.TORCH,
                prior: dict[tuple[str, str], Stats] | None = None
                ) -> tuple[dict[tuple[str, str], Stats], dict[str, str]]:
    """Per pass, make(name, pass) -> (callable, context) for every implementation not failed yet,
    timed interleaved, with ratios paired against `baseline`; when the joint timing raises, each
    one alone, to say which one raised (with the last `traceback_lines` frames of its traceback,
    none when 0). With `prior` (the Stats of the earlier slices), one more slice of each timing.
    Returns ({(name, pass): Stats}, {name: why it failed})."""
    prior = prior or {}

    def before(ns, p):
        return {n: prior[(n, p)].slices for n in ns if (n, p) in prior}
    timed: dict[tuple[str, str], Stats] = {}
    failed: dict[str, str] = {}
    for p in passes:
        fns, ctxs = {}, {}
        for n in names:
            if n in failed:
                continue
            try:
                fns[n], ctxs[n] = make(n, p)
            except Exception as e:
                failed[n] = f"{p}: raised {type(e).__name__}: {e}"
        if fns:
            try:
                timed.update({(n, p): st for n, st in time_interleaved(
                    fns, device=device, budget=budget, contexts=ctxs, flush=flush,
                    baseline=baseline, prior=before(fns, p)).items()})
            except Exception:
                for n in fns:
                    try:
                        timed[(n, p)] = time_interleaved({n: fns[n]}, device=device, budget=budget,
                                                         contexts=ctxs, flush=flush,
                                                         prior=before([n], p))[n]
                    except Exception as e1:
                        failed[n] = f"{p}: raised during timing: {type(e1).__name__}: {e1}"
                        if traceback_lines:
                            failed[n] += "\n" + traceback.format_exc(limit=traceback_lines)
                if not failed:
                    raise
        del fns, ctxs  # frees a graph kept for the Backward pass
        tick(p)
    return timed, failed


def collect(labels: dict[str, str], passes, timed, failed, add) -> None:
    """add(name, label, pass, status, stats, detail) for every implementation and pass that was
    timed: FAILED with its reason where it failed during or after timing, else ok."""
    for n, label in labels.items():
        for p in passes:
            if n in failed:
                add(n, label, p, "failed", None, failed[n])
            elif (n, p) in timed:
                add(n, label, p, "ok", timed[(n, p)], "")


def in_order(results: list[Result], impls: list[str]) -> list[Result]:
    """Results sorted by implementation (as given on the command line), then pass."""
    order = {n: i for i, n in enumerate(impls)}
    pidx = {p: i for i, p in enumerate(PASSES)}
    return sorted(results, key=lambda r: (order.get(r.impl, 99), pidx[r.pass_]))


# ---- the run -------------------------------------------------------------------------------

class RowRun:
    """One (row, device) of a run: its implementations checked, then timed in one slice per
    sweep (Budget.sweeps), then checked again; `results()` gives its Results."""

    def __init__(self, row: Row, device: str, cfg: Config):
        self.row, self.device, self.cfg = row, device, cfg
        self.out: list[Result] = []
        self.ready: dict[str, impls_mod.Impl] = {}
        self.timed: dict[tuple[str, str], Stats] = {}
        self.failed: dict[str, str] = {}
        self.seconds = 0.0
        has_grad = bool(row.spec.make_inputs(row.case.params, device, 0).grad)
        self.passes = [p for p in cfg.passes if p in ("forward", "inference") or has_grad]

    def add(self, impl, label, pass_, status, stats=None, detail=""):
        f, b = work(self.row.spec, self.row.case.params, pass_)
        self.out.append(Result(self.row, self.device, impl, label, pass_, status, stats, f, b,
                               detail))

    def check(self, tick: Callable[[str], None]) -> bool:
        """Resolve and gate every implementation; False when one FAILED."""
        t0 = time.perf_counter()
        spec, case, device = self.row.spec, self.row.case, self.device
        ok = True
        for name in self.cfg.impls:
            try:
                impl = impls_mod.resolve(name, spec, device)
            except impls_mod.Unavailable as e:
                for p in self.cfg.passes:
                    self.add(name, name, p, "skipped", detail=str(e))
                continue
            for p in self.cfg.passes:
                if p not in self.passes:
                    self.add(name, impl.label, p, "skipped",
                             detail=f"{spec.name} has no differentiable inputs")
            bad = None if impl.is_baseline else gate(spec, case, device, impl, self.cfg.seeds)
            if bad:
                ok = False
                for p in self.passes:
                    self.add(name, impl.label, p, "failed", detail=bad)
            else:
                self.ready[name] = impl
        tick("check")
        self.seconds += time.perf_counter() - t0
        return ok

    def time(self, sweep: int, tick: Callable[[str], None]) -> None:
        """Slice `sweep` of every pass's timing, on fresh inputs (each implementation its own
        copy: same values and layout, own storage), which must be unchanged afterwards."""
        t0 = time.perf_counter()
        spec, case, device, cfg = self.row.spec, self.row.case, self.device, self.cfg
        names = [n for n in self.ready if n not in self.failed]
        if not names:
            for p in self.passes:
                tick(p)
            return
        own = {n: spec.make_inputs(case.params, device, 0) for n in names}
        flush = None
        if cfg.flush_l2 and device.startswith("cuda"):
            from .machine import l2_flusher
            flush = l2_flusher()
        budget = cfg.budget.slice(sweep) if cfg.budget.sweeps > 1 else cfg.budget
        timed, failed = time_passes(
            names, self.passes, lambda n, p: _callable(spec, self.ready[n], own[n], p, device),
            device, budget, tick, flush, prior=self.timed)
        self.timed.update(timed)
        self.failed.update(failed)
        last = sweep == cfg.budget.sweeps - 1
        for n in names:
            if n not in self.failed:
                bad = _after_timing(spec, case, device, self.ready[n], own[n], cfg, regate=last)
                if bad:
                    self.failed[n] = bad
        self.seconds += time.perf_counter() - t0

    def results(self) -> list[Result]:
        collect({n: i.label for n, i in self.ready.items()}, self.passes, self.timed,
                self.failed, self.add)
        return in_order(self.out, self.cfg.impls)


def run_row(row: Row, device: str, cfg: Config, tick: Callable[[str], None] = lambda s: None
            ) -> list[Result]:
    """One row on one device: checked, timed over every sweep, checked again."""
    rr = RowRun(row, device, cfg)
    rr.check(tick)
    for sweep in range(cfg.budget.sweeps):
        rr.time(sweep, tick)
    return rr.results()


def _after_timing(spec, case, device, impl, own, cfg: Config, regate: bool) -> str | None:
    """After timing: the implementation's inputs unchanged (against seed 0's, made afresh and
    never handed to an implementation), and, when `regate`, its results right again."""
    pristine = spec.make_inputs(case.params, device, 0)
    for k, v in pristine.kwargs.items():
        if k not in spec.mutates and not testing.same_values(v, own.kwargs[k]):
            return f"after timing: the implementation wrote its input {k!r}"
    if impl.is_baseline or not regate:
        return None
    return gate(spec, case, device, impl, cfg.seeds[:1], when="after timing: ")


def estimate_s(rows: list[Row], devices: list[str], cfg: Config) -> float:
    """Upper-bound-ish estimate of the run's duration (the stopping rule often ends earlier)."""
    b = cfg.budget
    per_timing = (b.budget_s + len(cfg.impls) * (b.warmup_s + 0.05 + (b.sweeps - 1) * 0.03)
                  + 0.1 * b.sweeps)
    per_gate = 0.15 * len(cfg.seeds)
    n = len(rows) * len(devices)
    extra = 4.0 if "torch-compile" in cfg.impls else 0.0
    return n * (len(cfg.passes) * per_timing + (len(cfg.impls) - 1) * per_gate + extra)


def run_all(devices: list[str], items, run_one, label, progress, keep_going: bool
            ) -> tuple[list[Result], bool]:
    """run_one(item, device, tick) -> its Results, for every device and item (rows or models),
    with progress lines; stops at the first FAILED one unless keep_going. Returns (results,
    stopped_early)."""
    out: list[Result] = []
    for device in devices:
        for item in items:
            name = f"{device} {label(item)}"

            def tick(step, name=name):
                if progress:
                    progress.advance(f"{name}: {step}")
            t0 = time.perf_counter()
            res = run_one(item, device, tick)
            out.extend(res)
            if progress:
                progress.note_row(name, res, time.perf_counter() - t0)
            if not keep_going and any(r.status == "failed" for r in res):
                return out, True
    return out, False


def run(rows: list[Row], devices: list[str], cfg: Config, progress=None) -> tuple[list[Result], bool]:
    """All rows on all devices: per device, every row checked (stopping after the first that
    FAILED unless keep_going), then `Budget.sweeps` sweeps through the rows, each timing one
    slice of every row, so each row's samples spread over the whole run. Returns (results,
    stopped_early)."""
    out: list[Result] = []
    for device in devices:
        runs, stopped = [], False
        for row in rows:
            rr = RowRun(row, device, cfg)
            runs.append(rr)
            if not rr.check(_ticker(progress, device, row)) and not cfg.keep_going:
                stopped = True
                break
        for sweep in range(cfg.budget.sweeps):
            if progress and cfg.budget.sweeps > 1:
                progress.note(f"sweep {sweep + 1} of {cfg.budget.sweeps}")
            for rr in runs:
                rr.time(sweep, _ticker(progress, device, rr.row))
        for rr in runs:
            res = rr.results()
            out.extend(res)
            if progress:
                progress.note_row(f"{device} {rr.row.op} {rr.row.case.name}", res, rr.seconds)
            stopped = stopped or (not cfg.keep_going and any(r.status == "failed" for r in res))
        if stopped:
            return out, True
    return out, False


def _ticker(progress, device: str, row: Row) -> Callable[[str], None]:
    name = f"{device} {row.op} {row.case.name}"
    return (lambda step: progress.advance(f"{name}: {step}")) if progress else (lambda step: None)

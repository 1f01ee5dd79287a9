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
from .profiling import tracer
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
    rank: int = 0                  # the torchrun rank that measured it (bench/dist.py)

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
    profile: str | None = None     # --profile DIR: a trace per (row, implementation, pass)
    rank_info: dict = field(default_factory=dict)   # this process's host, cores, GPU (dist.py)


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
         seeds=(0, 1, 2), when: str = "", dtype: torch.dtype = torch.float32) -> str | None:
    """None when `impl` passes on every seed, else what failed (seed, check, error, where)."""
    for seed in seeds:
        try:
            with impl.context():
                verdicts = testing.check(spec, case, device, seed, fn=impl.fn, dtype=dtype)
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
    go = torch.randn(probe.shape, generator=g).to(device, probe.dtype)
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
                profile: Callable[[str, str, Callable, Callable], None] | None = None,
                label: str = "") -> tuple[dict[tuple[str, str], Stats], dict[str, str]]:
    """Per pass, make(name, pass) -> (callable, context) for every implementation not failed yet,
    timed interleaved, with ratios paired against `baseline`; when the joint timing raises, each
    one alone, to say which one raised (with the last `traceback_lines` frames of its traceback,
    none when 0). With `profile`, profile(name, pass, callable, context) after each pass's
    timing, for every implementation that did not fail (an extra call, outside the statistics).
    Returns ({(name, pass): Stats}, {name: why it failed})."""
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
                    baseline=baseline, label=f"{label} {p}").items()})
            except Exception:
                for n in fns:
                    try:
                        timed[(n, p)] = time_interleaved({n: fns[n]}, device=device, budget=budget,
                                                         contexts=ctxs, flush=flush,
                                                         label=f"{label} {p}")[n]
                    except Exception as e1:
                        failed[n] = f"{p}: raised during timing: {type(e1).__name__}: {e1}"
                        if traceback_lines:
                            failed[n] += "\n" + traceback.format_exc(limit=traceback_lines)
                if not failed:
                    raise
        if profile:
            for n in fns:
                if n not in failed:
                    profile(n, p, fns[n], ctxs[n])
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

def run_row(row: Row, device: str, cfg: Config, tick: Callable[[str], None] = lambda s: None
            ) -> list[Result]:
    spec, case = row.spec, row.case
    results: list[Result] = []

    def add(impl, label, pass_, status, stats=None, detail=""):
        f, b = work(spec, case.params, pass_)
        results.append(Result(row, device, impl, label, pass_, status, stats, f, b, detail))

    # seed 0's inputs, never handed to an implementation: after timing, every implementation's
    # own copy must still equal them
    dtype = row.torch_dtype
    pristine = testing.inputs_at(spec, case.params, device, 0, dtype)
    passes = [p for p in cfg.passes if p in ("forward", "inference") or pristine.grad]
    no_grad_passes = [p for p in cfg.passes if p not in passes]
    no_torch = torch_cannot(spec, case, row.dtype, device)

    ready: dict[str, impls_mod.Impl] = {}
    for name in cfg.impls:
        try:
            impl = impls_mod.resolve(name, spec, device)
            why = no_torch or impl.refuses(row.dtype, spec.name)
            if why:
                raise impls_mod.Unavailable(why)
        except impls_mod.Unavailable as e:
            for p in cfg.passes:
                add(name, name, p, "skipped", detail=str(e))
            continue
        for p in no_grad_passes:
            add(name, impl.label, p, "skipped", detail=f"{spec.name} has no differentiable inputs")
        if impl.is_baseline:
            ready[name] = impl
            continue
        bad = gate(spec, case, device, impl, cfg.seeds, dtype=dtype)
        if bad:
            for p in passes:
                add(name, impl.label, p, "failed", detail=bad)
            continue
        ready[name] = impl
    tick("check")

    if not ready:
        for p in passes:
            tick(p)
        return results
    # every implementation gets its own inputs (same values and layout, own storage)
    own = {n: testing.inputs_at(spec, case.params, device, 0, dtype) for n in ready}
    flush = None
    if cfg.flush_l2 and device.startswith("cuda"):
        from .machine import l2_flusher
        flush = l2_flusher()
    profile = tracer(cfg.profile, device, f"{row.op} {case.name} {row.dtype}",
                     {n: impl.label for n, impl in ready.items()})
    timed, failed = time_passes(
        ready, passes, lambda n, p: _callable(spec, ready[n], own[n], p, device), device,
        cfg.budget, tick, flush, profile=profile, label=f"{row.op} {case.name} {row.dtype}")
    for n, impl in ready.items():
        if n not in failed:
            bad = _after_timing(spec, case, device, impl, pristine, own[n], cfg, dtype)
            if bad:
                failed[n] = bad
    collect({n: i.label for n, i in ready.items()}, passes, timed, failed, add)
    return in_order(results, cfg.impls)


def torch_cannot(spec: OpSpec, case, dtype: str, device: str) -> str | None:
    """Why torch cannot run `case` in `dtype` (probed for dtypes other than float32: forward and
    backward once, on inputs of its own), or None. The check's reference is torch at the row's
    dtype, so without it the row has nothing to be judged or timed against."""
    if dtype == "float32":
        return None
    try:
        inputs = testing.inputs_at(spec, case.params, device, 0, getattr(torch, dtype))
        kw = testing.leaf_kwargs(inputs)
        out = spec.ref(**kw)
        wrt = [kw[n] for n in inputs.grad]
        if wrt:
            torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True)
    except Exception as e:
        return impls_mod.torch_cannot_text(spec.name, dtype, device, e)
    return None


def _after_timing(spec, case, device, impl, pristine, own, cfg: Config, dtype: torch.dtype
                  ) -> str | None:
    """After timing: the implementation's inputs unchanged, and its results right again."""
    for k, v in pristine.kwargs.items():
        if k not in spec.mutates and not testing.same_values(v, own.kwargs[k]):
            return f"after timing: the implementation wrote its input {k!r}"
    if impl.is_baseline:
        return None
    return gate(spec, case, device, impl, cfg.seeds[:1], when="after timing: ",
                dtype=dtype)


# The rate of a check's arithmetic (the implementation, torch at the dtype and torch in float64,
# forward and backward), FLOP/s: float64 convolutions on 2 cores run at a few GFLOP/s.
GATE_FLOPS_RATE = 5e9


def row_estimate_s(row: Row, devices: list[str], cfg: Config) -> float:
    """Upper-bound-ish estimate of one row's duration (the stopping rule often ends earlier):
    the timing budget of every pass, and the checks, from the row's FLOPs."""
    per_timing = cfg.budget.budget_s + len(cfg.impls) * (cfg.budget.warmup_s + 0.05) + 0.1
    f = row.spec.flops(row.case.params)
    work = 3 * (f.get("forward", 0) + f.get("backward", 0)) / GATE_FLOPS_RATE
    per_gate = (0.15 + work) * len(cfg.seeds)
    extra = 4.0 if "torch-compile" in cfg.impls else 0.0
    return len(devices) * (len(cfg.passes) * per_timing + (len(cfg.impls) - 1) * per_gate
                           + extra)


def estimate_s(rows: list[Row], devices: list[str], cfg: Config) -> float:
    """The run's duration, estimated (row_estimate_s)."""
    return sum(row_estimate_s(r, devices, cfg) for r in rows)


def run_all(devices: list[str], items, run_one, label, progress, keep_going: bool,
            out: list | None = None) -> tuple[list[Result], bool]:
    """run_one(item, device, tick) -> its Results, for every device and item (rows or models),
    with progress lines; stops at the first FAILED one unless keep_going. Returns (results,
    stopped_early); the results are appended to `out` as they come, when given (what was
    measured before an exception stays there)."""
    out = [] if out is None else out
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


def run(rows: list[Row], devices: list[str], cfg: Config, progress=None, out=None
        ) -> tuple[list[Result], bool]:
    """All rows on all devices. Returns (results, stopped_early); see run_all for `out`."""
    return run_all(devices, rows, lambda row, device, tick: run_row(row, device, cfg, tick),
                   lambda row: f"{row.op} {row.case.name} {row.dtype}", progress, cfg.keep_going,
                   out)

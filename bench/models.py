"""Model benchmarks: VGG and ResNet built from dlkern's layers against the same networks on
torch's layers (dlkern.models), checked before they are timed, in the seeds' model tables.

    python -m bench.models --impl custom,torch                          # all nine models
    python -m bench.models --models resnet18,vgg16 --batch 8 --reps 6 --out results/
    python -m bench.models --models resnet50 --layers conv2d            # only convs from dlkern
    python -m bench.models --models resnet50 --impl mine=examples/plain_torch_impl.py:IMPLS,torch
    python -m bench.models --list

Per model and device:
1. Gate. Every implementation's model is loaded with the weights of one seeded torch model and
   runs forward and backward on a small batch (--gate-batch, at --image; train mode with dropout
   off, so batchnorm uses batch statistics and both sides draw no random masks). Its logits, the
   gradient of every parameter and the updated running statistics must be within the registry's
   tolerance of the op that owns them (dlkern.testing's rule: k x torch float32's own error
   against torch float64 on the same inputs; the references take the checked model's ReLU masks
   and max-pool argmaxes, so that a value within rounding of a branch point cannot route a
   gradient elsewhere on one side only). A model that fails is FAILED and not timed.
2. Timing, interleaved as in bench.layers (bench/timing.py): per pass, --warmup calls per
   implementation, then --reps samples per implementation in alternating order. Forward: train
   mode, building the graph; Backward: the gradients of every parameter over a graph kept from
   one forward; Total: forward and backward in one call; Inference: eval mode under no_grad.
3. After timing: the parameters must be unchanged and the gate's forward and backward must
   still agree (a kernel right once and wrong later fails then).

Exit codes: 0 all checked and timed, 1 a model FAILED, 2 bad arguments or unavailable device.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch

import dlkern
from dlkern import models as dm
from dlkern import registry, testing
from dlkern.registry import Case

from . import impls as impls_mod
from . import dist, machine, plot, plugins, report, runner
from .cli import (UsageError, add_report_options, closed_pipe_is_quiet, devices_info,
                  parse_devices, report_failed, split_csv, start, write_reports)
from .profiling import tracer
from .progress import Progress, fmt_s
from .runner import PASS_TITLES, PASSES, Result
from .timing import Budget
from . import workloads
from .workloads import Row

PROG = "bench.models"
SUITE = "models"
DEFAULT_PASSES = PASSES                     # the seeds' four columns
MODEL_KINDS = ("conv2d", "batch_norm", "linear")


@dataclass(frozen=True)
class ModelOp:
    """What a report row's `spec` needs to be: models are one pseudo-op, "model"."""
    name: str = "model"
    title: str = "Models"


MODEL_OP = ModelOp()


# ---- FLOPs ---------------------------------------------------------------------------------

def model_flops(name: str, batch: int, image: int) -> float:
    """Forward FLOPs of the convolutions and linear layers (2 per multiply-add), counted by
    running the torch variant on the meta device (no memory, no arithmetic)."""
    with torch.device("meta"):
        model = dm.create(name, "torch")
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            k = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total[0] += 2 * out.numel() * k
        elif isinstance(m, torch.nn.Linear):
            total[0] += 2 * out.numel() * m.in_features
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.empty(batch, 3, image, image, device="meta"))
    return float(total[0])


PASS_COST = {"forward": 1.0, "backward": 2.0, "total": 3.0, "inference": 0.9}


# ---- implementations -----------------------------------------------------------------------

@dataclass
class ModelImpl:
    name: str                                  # as given to --impl
    label: str                                 # as shown in the tables
    impl: dict                                 # dlkern.models impl mapping
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    is_baseline: bool = False
    dtypes: tuple[str, ...] | None = None      # None: any dtype torch runs the model in

    def refuses(self, dtype: str) -> str | None:
        """Why a model at `dtype` is skipped for this implementation, or None."""
        return impls_mod.dtype_refusal(self.label, self.dtypes, dtype)


def resolve_impl(name: str, device: str, kinds: tuple[str, ...]) -> ModelImpl:
    """torch, custom, custom:<variant> (a CPU path: reference, avx2, avx512), or an implementation from
    outside (bench/plugins.py) whose functions the layers of the kinds it covers call;
    UsageError otherwise."""
    dev = torch.device(device).type
    if name == impls_mod.TORCH:
        return ModelImpl(name, f"PyTorch {torch.__version__.split('+')[0]}",
                         {k: "torch" for k in dm.KINDS}, is_baseline=True)
    base, _, variant = name.partition(":")
    if base != "custom" or plugins.split_label(name)[0] is not None:
        if not plugins.is_external(name):
            raise UsageError(f"{PROG}: --impl: {name!r} is not a model implementation; models "
                             "take torch, custom, custom:<variant> (e.g. custom:reference), "
                             "pkg.module:name, path/to/file.py:name or an installed plugin")
        return _external(name, device, kinds)
    mapping = {k: ("dlkern" if k in kinds else "torch") for k in dm.KINDS}
    label = impls_mod._custom_label(dev, variant or None)
    if len(kinds) < len(MODEL_KINDS):
        label += f" ({'+'.join(kinds)})"
    dtypes = common_dtypes([registry.get(k).dtypes for k in kinds])
    if not variant:
        return ModelImpl(name, label, mapping, dtypes=dtypes)
    variants = registry.cpu_variants()
    if dev != "cpu" or variant not in variants:
        raise UsageError(f"{PROG}: --impl {name}: no such CPU variant here (has: "
                         f"{', '.join(variants)})")
    return ModelImpl(name, label, mapping, context=variants[variant], dtypes=dtypes)


def common_dtypes(each: list) -> tuple[str, ...] | None:
    """The dtypes every layer's implementation computes in (None where one takes any)."""
    known = [set(d) for d in each if d is not None]
    if not known:
        return None
    return tuple(d for d in workloads.DTYPES if all(d in k for k in known))


@functools.lru_cache(maxsize=None)
def _external(name: str, device: str, kinds: tuple[str, ...]) -> ModelImpl:
    """An implementation from outside: the layers of the --layers kinds it covers call its
    functions (dlkern.models' impl mapping), the others are torch's (loaded once per run: build
    clears the cache, so a file edited between two runs in one process is loaded again)."""
    try:
        found, why = plugins.covering(name, kinds, device)
    except ValueError as e:
        raise UsageError(f"{PROG}: {e}") from None
    if not found:
        raise UsageError(f"{PROG}: --impl {name}: covers none of the layer kinds "
                         f"{', '.join(kinds)} ({'; '.join(why.values())})")
    mapping = {k: found[k].fn if k in found else "torch" for k in dm.KINDS}
    return ModelImpl(name, f"{plugins.label_for(name)} ({'+'.join(found)})", mapping,
                     dtypes=common_dtypes([i.dtypes for i in found.values()]))


# ---- the gate ------------------------------------------------------------------------------

@dataclass
class GateResult:
    ok: bool
    verdicts: list = field(default_factory=list)
    detail: str = ""

    @property
    def worst(self) -> testing.Verdict | None:
        """The verdict closest to (or furthest past) its bound."""
        return max(self.verdicts, key=lambda v: v.margin) if self.verdicts else None


def gate_reference(state: dict, name: str, batch: int, image: int, device: str,
                   num_classes: int, seed: int = 0, dtype: torch.dtype = torch.float32
                   ) -> testing.ModelReference:
    """torch's results at `dtype` and in float64 on a seeded gate batch, from the (float32)
    weights `state`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, image, image, generator=g)
    go = torch.randn(batch, num_classes, generator=g, dtype=torch.float64)
    ref = dm.create(name, "torch", num_classes).to(device)
    ref.load_state_dict(state)
    return testing.model_reference(ref, x.to(device), go.to(device), dtype)


def torch_cannot(state: dict, name: str, image: int, device: str, num_classes: int,
                 dtype: torch.dtype) -> str | None:
    """Why torch cannot run the model in `dtype` (one forward and backward of a batch of 2,
    probed for dtypes other than float32), or None."""
    if dtype == torch.float32:
        return None
    try:
        m = dm.create(name, "torch", num_classes).to(device)
        m.load_state_dict(state)
        m = testing.model_check_mode(m.to(dtype))
        out = m(torch.randn(2, 3, image, image, device=device, dtype=dtype))
        out.sum().backward()
    except Exception as e:
        return impls_mod.torch_cannot_text(name, str(dtype).removeprefix("torch."), device, e)
    return None


def gate(model: torch.nn.Module, ref: testing.ModelReference, impl: ModelImpl,
         buffers: bool = True, when: str = "") -> GateResult:
    """dlkern.testing.check_model under the implementation's context; an exception is a failed
    check, not a harness crash."""
    try:
        with impl.context():
            vs = testing.check_model(model, ref, buffers)
    except Exception as e:
        return GateResult(False, [], f"{when}raised {type(e).__name__}: {e}")
    bad = [v for v in vs if not v.ok]
    detail = when + "; ".join(map(str, bad[:3])) + (f" (and {len(bad) - 3} more)"
                                                     if len(bad) > 3 else "")
    return GateResult(not bad, vs, detail if bad else "")


# ---- timing --------------------------------------------------------------------------------

def _callable(model, x, go, pass_: str, impl: ModelImpl):
    """The function one timed call runs, and the context its blocks run in."""
    params = [p for p in model.parameters() if p.requires_grad]
    if pass_ == "inference":
        model.eval()
        return (lambda: model(x)), runner.no_grad_context(impl)
    model.train()
    if pass_ == "forward":
        return (lambda: model(x)), impl.context
    if pass_ == "backward":
        # one forward outside the timed region; backward reruns over the kept graph
        with impl.context():
            out = model(x)
        return (lambda: torch.autograd.grad(out, params, go, retain_graph=True)), impl.context
    return (lambda: torch.autograd.grad(model(x), params, go)), impl.context


@dataclass
class Plan:
    name: str                # dlkern.models key
    display: str             # the seeds' name
    batch: int
    flops: float             # forward FLOPs at the timed batch
    gate_flops: float        # forward FLOPs at the gate batch
    dtype: str = "float32"   # the weights', inputs' and arithmetic's (not autocast)


@dataclass
class GateRecord:
    device: str
    model: str
    dtype: str
    impl: str
    label: str
    result: GateResult
    after: GateResult | None = None


@dataclass
class Config:
    impls: list[str]
    kinds: tuple[str, ...]
    passes: list[str]
    budget: Budget
    image: int
    gate_batch: int
    num_classes: int = 1000
    seed: int = 0
    keep_going: bool = False
    profile: str | None = None      # --profile DIR: a trace per (model, implementation, pass)


def _row(plan: Plan, image: int) -> Row:
    case = Case(plan.display, {"model": plan.name, "batch": plan.batch,
                               "shape": (plan.batch, 3, image, image)}, suites=(SUITE,))
    return Row(MODEL_OP, case, (SUITE,), plan.dtype)


def run_model(plan: Plan, device: str, cfg: Config, tick: Callable[[str], None] = lambda s: None
              ) -> tuple[list[Result], list[GateRecord]]:
    row = _row(plan, cfg.image)
    results: list[Result] = []
    gates: list[GateRecord] = []
    flops = {p: plan.flops * PASS_COST[p] if p != "inference" else plan.flops
             for p in cfg.passes}

    def add(impl, p, status, stats=None, detail=""):
        results.append(Result(row, device, impl.name, impl.label, p, status, stats,
                              flops[p], 0.0, detail))

    torch.manual_seed(cfg.seed)
    pristine = dm.create(plan.name, "torch", cfg.num_classes).state_dict()
    dtype = row.torch_dtype
    no_torch = torch_cannot(pristine, plan.name, cfg.image, device, cfg.num_classes, dtype)
    impls = []
    for impl in (resolve_impl(n, device, cfg.kinds) for n in cfg.impls):
        why = no_torch or impl.refuses(plan.dtype)
        if why:
            for p in cfg.passes:
                add(impl, p, "skipped", detail=why)
        else:
            impls.append(impl)
    ref = None
    if any(not i.is_baseline for i in impls):
        ref = gate_reference(pristine, plan.name, cfg.gate_batch, cfg.image, device,
                             cfg.num_classes, cfg.seed, dtype)
    ready: dict[str, tuple[ModelImpl, torch.nn.Module]] = {}
    for impl in impls:
        model = dm.create(plan.name, impl.impl, cfg.num_classes).to(device)
        model.load_state_dict(pristine)
        model.to(dtype)
        if not impl.is_baseline:
            res = gate(copy.deepcopy(model), ref, impl)
            gates.append(GateRecord(device, plan.display, plan.dtype, impl.name, impl.label, res))
            if not res.ok:
                for p in cfg.passes:
                    add(impl, p, "failed", detail=res.detail)
                continue
        ready[impl.name] = (impl, model)
    tick("gate")

    g = torch.Generator().manual_seed(cfg.seed + 1)
    x = torch.randn(plan.batch, 3, cfg.image, cfg.image, generator=g).to(dtype)
    go = torch.randn(plan.batch, cfg.num_classes, generator=g).to(dtype)
    own = {n: (x.clone().to(device), go.clone().to(device)) for n in ready}
    timed, failed = runner.time_passes(
        ready, cfg.passes, lambda n, p: _callable(ready[n][1], *own[n], p, ready[n][0]), device,
        cfg.budget, tick, traceback_lines=0,  # a model's report lists failures on one line
        profile=tracer(cfg.profile, device, plan.display,
                       {n: impl.label for n, (impl, _) in ready.items()}),
        label=plan.display)
    for n, (impl, model) in ready.items():
        if n not in failed and not impl.is_baseline:
            bad = _after_timing(model, pristine, ref, impl, [r for r in gates if r.impl == n])
            if bad:
                failed[n] = bad
    tick("after")
    runner.collect({n: impl.label for n, (impl, _) in ready.items()}, cfg.passes, timed, failed,
                   lambda n, label, p, st, stats, detail: add(ready[n][0], p, st, stats, detail))
    return runner.in_order(results, cfg.impls), gates


def _after_timing(model, pristine: dict, ref, impl: ModelImpl, records: list[GateRecord]) -> str:
    """After timing: the model's weights unchanged, and its gate passing again (recorded in the
    implementation's gate records)."""
    for k, v in model.named_parameters():
        if not torch.equal(v.detach().cpu(), pristine[k].to(v.dtype)):
            return f"after timing: the model's parameter {k!r} changed"
    res = gate(model, ref, impl, buffers=False, when="after timing: ")
    for rec in records:
        rec.after = res
    return "" if res.ok else res.detail


def estimate_s(plans: list[Plan], cfg: Config, gflops_rate: float) -> float:
    """Seconds the run will take, from the models' FLOPs at `gflops_rate` (a fraction of the
    measured FMA peak): timed and warm-up calls of every pass and implementation, plus the gates
    (torch float32 and float64, and each checked implementation twice)."""
    rate = max(gflops_rate, 1.0) * 1e9
    n = len(cfg.impls)
    checked = sum(1 for i in cfg.impls if i != impls_mod.TORCH)
    calls = cfg.budget.warmup_calls + cfg.budget.max_samples
    total = 0.0
    for pl in plans:
        for p in cfg.passes:
            total += n * calls * PASS_COST[p] * pl.flops / rate
        if checked:
            # float64 runs at about half the float32 rate
            total += (1 + 2 + 2 * checked) * 3 * pl.gate_flops / rate + 1.0
    return total


# ---- report --------------------------------------------------------------------------------

def gate_table(gates: list[GateRecord], device: str) -> str:
    lines = ["| model | dtype | implementation | tensors checked | worst err / bound | "
             "worst tensor | after timing |", "|---|---|---|---:|---:|---|---|"]
    n = 0
    for g in gates:
        if g.device != device:
            continue
        w = g.result.worst
        after = "-" if g.after is None else ("ok" if g.after.ok else "FAILED")
        verdict = "" if g.result.ok else " FAILED"
        lines.append(f"| {g.model} | {g.dtype} | {g.label} | {len(g.result.verdicts)} | "
                     f"{w.margin if w else float('nan'):.3g}{verdict} | "
                     f"{w.what if w else '-'} | {after} |")
        n += 1
    return "\n".join(lines) if n else ""


def markdown(results: list[Result], gates: list[GateRecord], meta: dict, plans: list[Plan],
             cfg: Config) -> str:
    recs = report.records(results, meta)
    impls = report._impls_in(results)
    first_impl, first_label = report.first_other(impls)
    batches = {}
    for pl in plans:
        batches.setdefault(pl.batch, []).append(pl.display)
    common = max(batches, key=lambda b: len(batches[b])) if batches else 0
    others = "; ".join(f"{', '.join(v)}: batch {b}" for b, v in batches.items() if b != common)
    b = cfg.budget
    out = ["# dlkern model benchmarks", "",
           f"{meta['date'][:10]} · torch {meta['torch']} · dlkern CPU path "
           f"{meta['dlkern'].get('cpu_isa')} · git {meta['git_commit'][:12]}  ",
           f"command: `{meta['command']}`  ",
           f"Input: batch {common}{f' ({others})' if others else ''}, 3x{cfg.image}x{cfg.image}, "
           f"{cfg.num_classes} classes, {', '.join(meta.get('dtypes', ['float32']))} (the "
           "whole model cast: weights, input and arithmetic; not autocast).  ",
           f"Each pass: {b.warmup_calls} warm-up call(s) per implementation, then "
           f"{b.max_samples} interleaved samples each. {report.TIMES_TEXT} "
           f"(±{b.target_ratio:.0%}); malloc {meta.get('malloc', 'default')}.  ",
           f"Gate before timing: batch {cfg.gate_batch}, train mode with dropout off; logits, "
           "every parameter's gradient and the running statistics within the registry's "
           "tolerances of torch float32/float64."]
    if cfg.kinds != MODEL_KINDS:
        out.append(f"dlkern layers in the custom models: {', '.join(cfg.kinds)}; the others "
                   "are torch's.")
    out += report.run_warnings(meta)
    for device in dict.fromkeys(r.device for r in results):
        info = meta["devices"].get(device, {"device": device, "name": device})
        out += ["", report.device_header(info)]
        for dtype, dev in report.by_dtype([r for r in results if r.device == device]).items():
            dt_recs = [r for r in recs if r["device"] == device and r["dtype"] == dtype]
            impls = report._impls_in(dev)
            if not impls:
                continue            # every model skipped at this dtype: the Skipped list says why
            first_impl, first_label = report.first_other(impls)
            out += ["", f"### Models · {dtype}", "",
                    report.layers_table(dev, device, SUITE, impls, cfg.passes, first="Model")]
            out += report.ratio_section(dt_recs, device, first_impl, first_label, dtype)
            out += ["", f"### Throughput · {dtype}", "",
                    "FLOPs of the convolutions and linear layers (2 per multiply-add; backward "
                    "twice the forward), over the median time; % peak against the FMA peak "
                    "above.", "", report.roofline_table(dt_recs, device)]
        gt = gate_table(gates, device)
        if gt:
            out += ["", "### Gate", "",
                    "worst err / bound: over every checked tensor, the largest ratio of an error "
                    "against torch float64 (element-wise and in relative L2 norm) to the bound "
                    "the registry allows (k x torch's own error at the dtype); < 1 passes. The "
                    "references follow the checked model's ReLU masks and max-pool argmaxes "
                    "(dlkern/testing.py check_model).", "",
                    gt]
        out += report.failed_and_skipped([r for r in recs if r["device"] == device],
                                         with_op=False)
    return "\n".join(out) + "\n"


# ---- command line --------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="custom,torch",
                    help="torch, custom (dlkern layers), custom:<variant> (a CPU path, e.g. "
                         "custom:reference), or your own: [label=]pkg.module:name, "
                         "path/to/file.py:name or an installed plugin, whose functions the "
                         "layers of the kinds it covers call (bench/plugins.py) "
                         "(default: custom,torch)")
    ap.add_argument("--models", default="all",
                    help=f"comma-separated, or all: {', '.join(dm.MODELS)} (default: all)")
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size for every model (default: 8, and 4 for ResNet101/152 as "
                         "in the seeds)")
    ap.add_argument("--image", type=int, default=224, help="image height and width (default 224)")
    ap.add_argument("--classes", type=int, default=1000, help="output classes (default 1000)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or both (default: cpu)")
    ap.add_argument("--pass", dest="passes", default=",".join(DEFAULT_PASSES),
                    help="forward, backward, total, inference (default: all four)")
    ap.add_argument("--layers", default=",".join(MODEL_KINDS),
                    help="which layer kinds the custom models take from dlkern: conv2d, "
                         "batch_norm, linear (default: all; the rest are torch's)")
    ap.add_argument("--reps", type=int, default=6,
                    help="timed samples per implementation and pass (default 6, the fewest that "
                         "give each ratio a 95%% interval: the range of its per-round ratios)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="warm-up calls per implementation and pass (default 1)")
    ap.add_argument("--gate-batch", type=int, default=2,
                    help="batch of the correctness gate (default 2)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch and dlkern alike (default: torch's default)")
    ap.add_argument("--dtype", default="float32",
                    help=f"dtypes, comma-separated: {', '.join(workloads.DTYPES)} (default "
                         "float32). The whole model is cast: weights, input and arithmetic in "
                         "the dtype (not autocast, which keeps float32 weights and picks a dtype "
                         "per op); dlkern's layers are float32, so custom is skipped at others")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 samples, 1 warm-up (numbers are indicative only)")
    ap.add_argument("--plot", action="store_true", help="also write a PNG bar chart to --out")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also record one extra call per model, implementation and pass under "
                         "torch.profiler, as Chrome traces in DIR (not in the statistics)")
    add_report_options(ap, "model")
    ap.add_argument("--list", action="store_true", help="list the models")
    return ap.parse_args(argv)


def _list() -> str:
    lines = ["models (name: display name, default batch, parameters, forward GFLOP per image "
             "at 224x224):"]
    for key, (_, display, batch) in dm.MODELS.items():
        with torch.device("meta"):
            n = sum(p.numel() for p in dm.create(key, "torch").parameters())
        lines.append(f"  {key}: {display}, batch {batch}, {n / 1e6:.1f} M parameters, "
                     f"{model_flops(key, 1, 224) / 1e9:.2f} GFLOP")
    lines.append("implementations: torch, custom, custom:<variant> (" +
                 ", ".join(registry.cpu_variants()) + "), pkg.module:name, path/to/file.py:name, "
                 "[label=]any of these")
    lines.append(plugins.installed_line())
    return "\n".join(lines)


def build(args) -> tuple[list[Plan], list[str], Config]:
    if dist.from_env():
        raise UsageError(f"{PROG}: torchrun: whole models run in one process (a sweep of layer "
                         "rows shards across ranks: torchrun ... -m bench.layers)")
    try:
        dtypes = workloads.parse_dtypes(args.dtype, PROG)
    except ValueError as e:
        raise UsageError(str(e)) from None
    passes = split_csv(args.passes)
    bad = [p for p in passes if p not in PASSES]
    if bad or not passes:
        raise UsageError(f"{PROG}: --pass: expected some of {', '.join(PASSES)}, got "
                         f"{args.passes!r}")
    names = list(dm.MODELS) if args.models.strip() == "all" else split_csv(args.models)
    if not names:
        raise UsageError(f"{PROG}: --models: no model given")
    keys = []
    for n in names:
        k = n.strip().lower().replace(" ", "_").replace("-", "_")
        if k not in dm.MODELS:
            raise UsageError(f"{PROG}: --models: unknown model {n!r}; known: "
                             f"{', '.join(dm.MODELS)}, all")
        keys.append(k)
    kinds = tuple(split_csv(args.layers))
    if not kinds or any(k not in MODEL_KINDS for k in kinds):
        raise UsageError(f"{PROG}: --layers: expected some of {', '.join(MODEL_KINDS)}, got "
                         f"{args.layers!r}")
    kinds = tuple(k for k in MODEL_KINDS if k in kinds)
    for flag, v, lo in (("--batch", args.batch, 1), ("--reps", args.reps, 1),
                        ("--warmup", args.warmup, 0), ("--gate-batch", args.gate_batch, 2),
                        ("--classes", args.classes, 1), ("--threads", args.threads, 1)):
        if v is not None and v < lo:
            raise UsageError(f"{PROG}: {flag} must be >= {lo}, got {v}")
    if args.image < 32:
        raise UsageError(f"{PROG}: --image must be >= 32 (VGG halves it five times, ResNet "
                         f"divides it by 32), got {args.image}")
    impl_names = split_csv(args.impl)
    if not impl_names or len(set(impl_names)) != len(impl_names):
        raise UsageError(f"{PROG}: --impl: expected distinct implementations, got {args.impl!r}")
    devices = parse_devices(args.device, PROG)
    _external.cache_clear()
    for d in devices:
        labels = [resolve_impl(n, d, kinds).label for n in impl_names]
        if len(set(labels)) != len(labels):
            raise UsageError(f"{PROG}: --impl: two implementations would share a label "
                             f"({', '.join(labels)}); name them apart with label=...")
    fmts = split_csv(args.format)
    if any(f not in ("md", "csv", "json") for f in fmts):
        raise UsageError(f"{PROG}: --format: expected md, csv and/or json, got {args.format!r}")
    if args.plot:
        if not args.out:
            raise UsageError(f"{PROG}: --plot writes a PNG file: give --out DIR")
        why = plot.available()
        if why:
            raise UsageError(why.replace("bench.layers", PROG))
    reps, warm = (2, 1) if args.quick else (args.reps, args.warmup)
    budget = Budget(warmup_s=0.0, min_sample_s=0.05, min_samples=reps, max_samples=reps,
                    target_spread=0.0, budget_s=float("inf"), warmup_calls=warm,
                    rewarm_calls=0)
    plans = []
    for dtype in dtypes:
        for k in keys:
            batch = args.batch or dm.MODELS[k][2]
            plans.append(Plan(k, dm.MODELS[k][1], batch, model_flops(k, batch, args.image),
                              model_flops(k, args.gate_batch, args.image), dtype))
    cfg = Config(impls=impl_names, kinds=kinds, passes=passes, budget=budget, image=args.image,
                 gate_batch=args.gate_batch, num_classes=args.classes,
                 keep_going=args.keep_going, profile=args.profile)
    return plans, devices, cfg


@closed_pipe_is_quiet
def main(argv=None) -> int:
    started = start(argv, parse_args, _list, build, PROG)
    if isinstance(started, int):
        return started
    argv, args, (plans, devices, cfg) = started
    threads = machine.threads_info()
    alloc = machine.steady_malloc() if args.malloc == "steady" else {"malloc": "default"}
    dev_info = devices_info(devices, threads, not args.no_peaks, 0.3)
    rate = 0.0
    for d in devices:
        peak = (dev_info[d].get("peaks") or {}).get("peak_gflops")
        if d == "cpu":
            # an estimate: whole models run at about 40% of the FMA peak on 2-core machines
            r = 0.4 * peak if peak else 40.0 * threads["torch_intraop"]
        else:
            r = 0.3 * peak if peak else 5000.0
        rate = r if not rate else min(rate, r)
    est = estimate_s(plans, cfg, rate) * len(devices)
    print(f"{PROG}: {len(plans)} model(s) x {len(devices)} device(s) x {len(cfg.passes)} passes, "
          f"impls {','.join(cfg.impls)}, {cfg.budget.max_samples} samples, "
          f"{threads['torch_intraop']} threads; about {fmt_s(est)} "
          f"(from the models' FLOPs at ~{rate:.0f} GFLOP/s)", file=sys.stderr)
    steps = len(plans) * len(devices) * (2 + len(cfg.passes))
    prog = Progress(steps, est)
    gates: list[GateRecord] = []

    def one(plan, device, tick):
        res, gs = run_model(plan, device, cfg, tick)
        gates.extend(gs)
        return res
    try:
        results, stopped = runner.run_all(devices, plans, one,
                                          lambda pl: f"{pl.display} {pl.dtype} (batch {pl.batch})",
                                          prog,
                                          cfg.keep_going)
    finally:
        prog.close()
    meta = report.make_meta(argv, dev_info, threads, cfg.budget, cfg.impls, cfg.passes,
                            {"dtypes": list(dict.fromkeys(pl.dtype for pl in plans)),
                             "quick": args.quick, "image": cfg.image,
                             "ranks": [dist.describe(dist.alone(), devices, PROG)],
                             "gate_batch": cfg.gate_batch, "layers": list(cfg.kinds), **alloc},
                            prog="python -m bench.models")
    md = markdown(results, gates, meta, plans, cfg)
    print(md)
    if args.out:
        def json_doc():
            doc = report.to_json(results, meta)
            doc["gates"] = [{"device": g.device, "model": g.model, "dtype": g.dtype,
                             "impl": g.impl,
                             "ok": g.result.ok, "checked": len(g.result.verdicts),
                             "worst": str(g.result.worst) if g.result.worst else None,
                             "detail": g.result.detail,
                             "after_ok": None if g.after is None else g.after.ok}
                            for g in gates]
            return json.dumps(doc, indent=1)
        write_reports(args.out, split_csv(args.format), {
            "md": ("models.md", md), "csv": ("models.csv", lambda: report.to_csv(results, meta)),
            "json": ("models.json", json_doc)}, PROG,
            (lambda: plot.plot_models(report.records(results, meta), args.out)) if args.plot
            else None)
    failed = sorted({(r.device, r.row.case.name, r.row.dtype, r.impl) for r in results
                     if r.status == "failed"})
    return report_failed(PROG, [f"{d} {m} ({dtype}) [{impl}]" for d, m, dtype, impl in failed],
                         "model", stopped)


if __name__ == "__main__":
    sys.exit(main())

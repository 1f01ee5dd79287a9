"""Per-op speed against torch on the registry's benchmark cases, checked before timed.

    python -m bench.op_speed                       # every op, every bench case, CPU
    python -m bench.op_speed --ops softmax --threads 2 --variants reference

For each case: dlkern.testing.check on 3 seeds (forward and every gradient against torch float32
and float64); a case that fails is reported FAILED and not timed, and the exit code is 1. Then
forward and forward+backward are timed with bench.timing.time_interleaved (torch and dlkern
alternating) and the ratio dlkern/torch of the medians is printed (< 1: dlkern is faster).
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import time

import torch

import dlkern
from dlkern import registry, testing

from .timing import time_interleaved


def _prepared(spec, case, seed=0):
    inputs = spec.make_inputs(case.params, "cpu", seed)
    return inputs, dict(inputs.kwargs), testing.leaf_kwargs(inputs)


def _fwd_bwd(fn, kwg, names, grad_out):
    def run():
        out = fn(**kwg)
        return torch.autograd.grad(out, [kwg[n] for n in names], grad_out)
    return run


def bench_case(spec, case, variant, budget):
    fn = spec.fn
    ctx = spec.variants[variant] if variant else contextlib.nullcontext
    with ctx():
        for seed in (0, 1, 2):
            bad = [v for v in testing.check(spec, case, "cpu", seed) if not v.ok]
            if bad:
                return {"failed": f"seed {seed}: " + "; ".join(map(str, bad))}
        inputs, kw, kwg = _prepared(spec, case)
        with torch.no_grad():
            out = spec.ref(**kw)
        grad_out = torch.randn_like(out)
        fwd = time_interleaved({"torch": lambda: spec.ref(**kw), "dlkern": lambda: fn(**kw)},
                               budget_s=budget)
        row = {"fwd": fwd}
        if inputs.grad:
            row["fb"] = time_interleaved(
                {"torch": _fwd_bwd(spec.ref, kwg, inputs.grad, grad_out),
                 "dlkern": _fwd_bwd(fn, kwg, inputs.grad, grad_out)}, budget_s=budget)
        # right once, right after: check again once the timing loops are done
        again = [v for v in testing.check(spec, case, "cpu", 0) if not v.ok]
        if again:
            return {"failed": "after timing: " + "; ".join(map(str, again))}
    return row


def _fmt_t(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.op_speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="threads for torch and dlkern")
    ap.add_argument("--variants", default="",
                    help="also time these dlkern CPU paths, e.g. 'reference' (default: best only)")
    ap.add_argument("--budget", type=float, default=4.0, help="seconds of sampling per timing")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [n for n in args.ops.split(",") if n] or [s.name for s in registry.ops()]
    specs = [registry.get(n) for n in names]
    caps = dlkern.capabilities()
    print(f"# dlkern op speed: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, dlkern path "
          f"{caps['cpu_isa']}, {time.strftime('%Y-%m-%d')}")
    print("ratio = dlkern median / torch median (interleaved); < 1 means dlkern is faster; "
          "p20-p80 spread in brackets\n")
    failed = 0
    for spec in specs:
        print(f"## {spec.name}\n")
        print("| case | path | torch fwd | dlkern fwd | fwd ratio | torch fwd+bwd | "
              "dlkern fwd+bwd | fwd+bwd ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for case in spec.bench_cases:
            for variant in [None] + [v for v in args.variants.split(",") if v]:
                if variant and variant not in spec.variants:
                    print(f"unknown variant {variant!r} for {spec.name}; have "
                          f"{sorted(spec.variants)}", file=sys.stderr)
                    return 2
                path = variant or caps["cpu_isa"]
                row = bench_case(spec, case, variant, args.budget)
                if "failed" in row:
                    failed += 1
                    print(f"| {case.name} | {path} | FAILED: {row['failed']} |||||||", flush=True)
                    continue
                cells = []
                for key in ("fwd", "fb"):
                    if key not in row:
                        cells += ["-", "-", "-"]
                        continue
                    t, d = row[key]["torch"], row[key]["dlkern"]
                    noisy = " (noisy)" if max(t.spread, d.spread) > 0.10 else ""
                    cells += [f"{_fmt_t(t.median)} [{t.spread:.0%}]",
                              f"{_fmt_t(d.median)} [{d.spread:.0%}]",
                              f"**{d.median / t.median:.3f}**{noisy}"]
                print(f"| {case.name} | {path} | " + " | ".join(cells) + " |", flush=True)
        print()
    if failed:
        print(f"{failed} case(s) FAILED the correctness check and were not timed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

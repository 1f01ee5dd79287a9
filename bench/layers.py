"""Layer benchmarks: check every implementation against torch, then time it, then report.

    python -m bench.layers --impl custom,torch                     # layers + tensorgrad suites
    python -m bench.layers --suite all --impl custom:reference,custom,torch --out results/
    python -m bench.layers --shapes my_shapes.toml --pass forward,inference --threads 1
    python -m bench.layers --list                                  # suites, ops, parameters

Every (workload, implementation, device) is first checked on several seeded inputs (forward and
every gradient against torch float32 and float64); one that fails is reported FAILED and not
timed, and the exit code is 1 (also with --keep-going, which only carries on past it). Timing is
interleaved (see bench/timing.py and docs/benchmarks.md); the first non-torch implementation
listed in --impl is the one the ratio tables compare with torch.

Exit codes: 0 all checked and timed, 1 a row FAILED, 2 bad arguments or unavailable device.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

import dlkern  # noqa: F401  (loads the ops and their registry entries)
from dlkern import registry

from . import impls as impls_mod
from . import dist, machine, plot, plugins, report, runner, workloads
from .cli import (UsageError, add_report_options, closed_pipe_is_quiet, devices_info,
                  parse_devices, report_failed, split_csv, start, write_reports)
from .progress import Progress
from .timing import Budget


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.layers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="custom,torch",
                    help="implementations, comma-separated: torch, custom (the best path), "
                         "custom:<variant> (e.g. custom:reference), torch-compile, cupy "
                         "(GPU rows of linear and softmax; needs the cupy extra) "
                         "(default: custom,torch)")
    ap.add_argument("--suite", default=None,
                    help=f"suites, comma-separated: {', '.join(workloads.STANDARD_SUITES)}, ..., "
                         f"all (default: {','.join(workloads.DEFAULT_SUITES)}; none when "
                         "--shapes is given)")
    ap.add_argument("--ops", default="", help="only these ops, comma-separated")
    ap.add_argument("--shapes", default=None, help="a CSV or TOML file of extra rows")
    ap.add_argument("--device", default=None,
                    help="cpu, cuda or both (default: cpu, and cuda when a GPU is visible)")
    ap.add_argument("--pass", dest="passes", default=",".join(runner.DEFAULT_PASSES),
                    help="forward, backward, total, inference (default: forward,backward,total)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for torch (intra-op, OpenMP, MKL) and dlkern alike "
                         "(default: torch's default)")
    ap.add_argument("--dtype", default="float32",
                    help=f"dtypes, comma-separated: {', '.join(workloads.DTYPES)}; each is its "
                         "own set of rows (default: float32). dlkern's kernels are float32: "
                         "their rows at other dtypes are skipped with the reason")
    ap.add_argument("--quick", action="store_true",
                    help="small repetition budget for smoke runs (numbers are indicative only)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of sampling per timing (default 2, 0.15 with --quick)")
    ap.add_argument("--seeds", type=int, default=3, help="inputs checked before timing (>= 3)")
    ap.add_argument("--flush-l2", action="store_true",
                    help="CUDA: flush the L2 cache before every timed call")
    ap.add_argument("--plot", action="store_true", help="also write PNG plots to --out")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="also record one extra call per row, implementation and pass under "
                         "torch.profiler, as Chrome traces in DIR (not in the statistics)")
    add_report_options(ap, "row")
    ap.add_argument("--list", action="store_true", help="list suites, ops and their parameters")
    return ap.parse_args(argv)


def _list() -> str:
    lines = ["suites: " + ", ".join(workloads.known_suites()) + ", all",
             "implementations: " + ", ".join(impls_mod.names()) + ", pkg.module:name, "
             "path/to/file.py:name, [label=]any of these",
             plugins.installed_line(), "", "ops:"]
    for spec in registry.ops():
        lines.append(f"  {spec.name} (devices: {', '.join(spec.devices)}; variants: "
                     f"{', '.join(spec.variants) or '-'})")
        for k, v in spec.params_doc.items():
            lines.append(f"    {k}{' (required)' if k in spec.required else ''}: {v}")
        for c in spec.bench_cases:
            lines.append(f"    case {c.name!r}: suites {', '.join(c.suites)}")
    return "\n".join(lines)


def _covers_some_row(impl_names, rows, devices) -> None:
    """An implementation from outside that can run none of the run's rows is a mistake in the
    command line, refused before anything runs (one that covers some is skipped on the rest)."""
    specs = list({r.spec.name: r.spec for r in rows}.values())
    for name in impl_names:
        if not plugins.is_external(name):
            continue
        why = []
        for spec, d in ((spec, d) for spec in specs for d in devices):
            try:
                impls_mod.resolve(name, spec, d)
                break
            except impls_mod.Unavailable as e:
                why.append(str(e))
        else:
            raise UsageError(f"bench.layers: --impl {name}: covers none of this run's ops "
                             f"({'; '.join(why[:3])})")


def build(args) -> tuple[list[workloads.Row], list[str], runner.Config]:
    try:
        dtypes = workloads.parse_dtypes(args.dtype)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.seeds < 3:
        raise UsageError(f"bench.layers: --seeds must be >= 3, got {args.seeds}")
    passes = split_csv(args.passes)
    bad = [p for p in passes if p not in runner.PASSES]
    if bad or not passes:
        raise UsageError(f"bench.layers: --pass: expected some of {', '.join(runner.PASSES)}, "
                         f"got {args.passes!r}")
    impl_names = split_csv(args.impl)
    if not impl_names:
        raise UsageError("bench.layers: --impl: no implementation given")
    try:
        plugins.register_external(impl_names)
    except ValueError as e:
        raise UsageError(f"bench.layers: {e}") from None
    try:
        impls_mod.validate(impl_names)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if "cupy" in impl_names:
        from . import cupy_impl
        why = cupy_impl.available()
        if why:
            raise UsageError(f"bench.layers: --impl cupy: {why}")
    fmts = split_csv(args.format)
    if any(f not in ("md", "csv", "json") for f in fmts):
        raise UsageError(f"bench.layers: --format: expected md, csv and/or json, got {args.format!r}")
    if args.plot:
        if not args.out:
            raise UsageError("bench.layers: --plot writes PNG files: give --out DIR")
        why = plot.available()
        if why:
            raise UsageError(why)
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"bench.layers: --threads must be >= 1, got {args.threads}")
    devices = parse_devices(args.device)
    ops = split_csv(args.ops)
    try:
        rows: list[workloads.Row] = []
        suite_arg = args.suite if args.suite is not None else (
            "" if args.shapes else ",".join(workloads.DEFAULT_SUITES))
        suites = split_csv(suite_arg)
        if "all" in suites:
            suites = workloads.known_suites()
        if suites:
            rows += workloads.select(suites, ops)
        if args.shapes:
            rows += [r for r in workloads.load_shapes(args.shapes) if not ops or r.op in ops]
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not rows:
        raise UsageError(f"bench.layers: no rows to run: suites {suite_arg or '-'} have no cases "
                         f"for ops {', '.join(ops) or 'any'} (registered ops: "
                         f"{', '.join(s.name for s in registry.ops())}; see --list)")
    _covers_some_row(impl_names, rows, devices)
    rows = workloads.at_dtypes(rows, dtypes)
    budget = Budget.quick() if args.quick else Budget()
    if args.budget is not None:
        budget.budget_s = args.budget
    cfg = runner.Config(impls=impl_names, passes=passes, budget=budget,
                        seeds=tuple(range(args.seeds)), flush_l2=args.flush_l2,
                        keep_going=args.keep_going, profile=args.profile,
                        rank_info=dist.describe(dist.from_env() or dist.alone(), devices,
                                                "bench.layers"))
    return rows, devices, cfg


def measure(argv, args, rows, devices, cfg, progress: bool = True):
    """The run itself, shared by main and bench.api.run: (results, meta, stopped_early). Under
    torchrun each rank runs its share and rank 0 gets everyone's results; the other ranks get
    None (bench/dist.py)."""
    rank = dist.from_env()
    me = rank or dist.alone()
    threads = machine.threads_info()
    alloc = machine.steady_malloc() if args.malloc == "steady" else {"malloc": "default"}
    costs = [runner.row_estimate_s(r, devices, cfg) for r in rows]
    split = dist.shard(costs, me.world)
    shares = [sum(costs[i] for i in s) for s in split]
    mine, est = split[me.rank], shares[me.rank]
    who = f"rank {me.rank} of {me.world} ({me.host}): " if rank else ""
    if progress:
        print(f"bench.layers: {who}{len(mine)} rows x {len(devices)} device(s) x "
              f"{len(cfg.passes)} passes, impls {','.join(cfg.impls)}, "
              f"{threads['torch_intraop']} threads; about {est:.0f} s", file=sys.stderr)
    if rank:
        dist.start(rank, 2 * max(shares) + 600)
    dev_info = devices_info(devices, threads, not args.no_peaks, 0.1 if args.quick else 0.3)
    # under torchrun each rank's own devices and peaks (its % peak columns use them)
    ranks = [{**cfg.rank_info, **({"devices": dev_info} if rank else {})}]

    def run(share, out=None):
        steps = len(share) * len(devices) * (1 + len(cfg.passes))
        # one terminal, one bar: the other ranks print a plain line per row
        prog = Progress(steps, est, enabled=progress, prefix=who, bar=me.rank == 0)
        try:
            return runner.run(share, devices, cfg, prog, out)
        finally:
            prog.close()
    errors: list[str] = []
    if rank is None:
        results, stopped = run(rows)
    else:
        payload = dist.run_share(rows, mine, devices, lambda share, out: run(share, out)[1])
        got = dist.gather(rank, {**payload, "rank": ranks[0]})
        if got is None:
            return None
        ranks = [p["rank"] for p in got]
        results, stopped, errors = dist.merge(got, rows, devices, ranks)
    prog = "python -m bench.layers"
    if rank:
        prog = (f"torchrun --nnodes {rank.world // rank.local_world} --nproc-per-node "
                f"{rank.local_world} -m bench.layers")
    meta = report.make_meta(argv, dev_info, threads, cfg.budget, cfg.impls, cfg.passes,
                            {"dtypes": list(dict.fromkeys(r.dtype for r in rows)),
                             "quick": args.quick, "ranks": ranks, "rank_errors": errors,
                             **alloc}, prog=prog)
    return results, meta, stopped


@closed_pipe_is_quiet
def main(argv=None) -> int:
    started = start(argv, parse_args, _list, build, "bench.layers")
    if isinstance(started, int):
        return started
    argv, args, (rows, devices, cfg) = started
    measured = measure(argv, args, rows, devices, cfg)
    if measured is None:
        return 0            # a torchrun rank other than 0: rank 0 reports its results
    results, meta, stopped = measured
    md = report.markdown(results, meta, cfg.passes)
    print(md)
    if args.out:
        sweep = {(r.row.op, r.row.case.name): r.row.case.sweep for r in results
                 if r.row.case.sweep}
        write_reports(args.out, split_csv(args.format), {
            "md": ("report.md", md),
            "csv": ("results.csv", lambda: report.to_csv(results, meta)),
            "json": ("results.json", lambda: json.dumps(report.to_json(results, meta), indent=1))},
            "bench.layers",
            (lambda: plot.plot(report.records(results, meta), args.out, sweep)) if args.plot
            else None)
    failed = sorted({(r.device, r.row.op, r.row.case.name, r.row.dtype, r.impl) for r in results
                     if r.status == "failed"})
    for e in meta["rank_errors"]:
        print(f"bench.layers: {e}", file=sys.stderr)
    code = report_failed("bench.layers", [f"{d} {op} {case} ({dtype}) [{impl}]"
                                          for d, op, case, dtype, impl in failed], "row", stopped)
    return 1 if meta["rank_errors"] else code


if __name__ == "__main__":
    sys.exit(main())

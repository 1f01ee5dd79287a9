"""Reports: markdown in the seeds' shapes, plus CSV and JSON records with full metadata.

Markdown, per device:
- a header "CPU USED --- <model>, N threads" / "GPU USED --- <name>" and the measured peaks;
- the `layers` suite (and user shape files, and op suites) as the flux-vs-pytorch layer tables:
  one line per framework, Forward Pass / Backward Pass / Total Time (/ Inference), the faster
  entry in bold;
- the `tensorgrad` suite as tensorgrad-vs-torch's tables: per op and pass, reference time, custom
  time, "slower by", and an "overall" row with the medians over the inputs;
- the `linear-sweep` suite as the raw lines of lux-vs-flux-dense;
- a ratio table (the first non-torch implementation against torch) and a roofline table (every
  implementation: GFLOP/s and GB/s from the registry's model, and their share of the peaks);
- the FAILED rows with their errors.
"""
from __future__ import annotations

import csv
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any

import torch

from .impls import TORCH
from .runner import PASS_TITLES, PASSES, Result
from .workloads import STANDARD_SUITES, USER_SUITE

SCHEMA = "dlkern.bench/2"
NOISY_MARK = "†"
WIDE_MARK = "‡"


# ---- metadata ------------------------------------------------------------------------------

def git_commit() -> str:
    """HEAD of dlkern's checkout (+dirty), or DLKERN_GIT_COMMIT where there is no git repository
    (a copy of the tree, as the GPU machine gets), else 'unknown'."""
    fallback = os.environ.get("DLKERN_GIT_COMMIT", "unknown")
    try:
        here = __file__.rsplit("/", 2)[0]
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else fallback
    except Exception:
        return fallback


def make_meta(argv: list[str], devices: dict[str, dict], threads: dict, budget, impls,
              passes, extra: dict | None = None, prog: str = "python -m bench.layers") -> dict:
    import dlkern
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "dlkern": dlkern.capabilities(),
        "command": " ".join([prog] + list(argv)),
        "threads": threads,
        "devices": devices,
        "impls": list(impls),
        "passes": list(passes),
        "budget": dict(vars(budget)),
        **(extra or {}),
    }


# ---- records -------------------------------------------------------------------------------

def _baseline(results: list[Result]) -> dict:
    return {(r.device, r.row.key, r.pass_): r.median for r in results
            if r.impl == TORCH and r.status == "ok"}


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def _rank(meta: dict, rank: int) -> dict:
    """The meta entry of the rank that measured a result (bench/dist.py); {} in a document
    from before there were ranks."""
    ranks = meta.get("ranks") or []
    return ranks[rank] if rank < len(ranks) else {}


def records(results: list[Result], meta: dict) -> list[dict]:
    base = _baseline(results)
    out = []
    for r in results:
        who = _rank(meta, r.rank)
        devices = who.get("devices") or meta["devices"]
        peaks = devices.get(r.device, {}).get("peaks", {}) or {}
        s = r.stats
        rec = OrderedDict(
            suites=list(r.row.suites), op=r.row.op, case=r.row.case.name,
            params=_jsonable(dict(r.row.case.params)), dtype=r.row.dtype, device=r.device,
            device_id=who.get(r.device, r.device), host=who.get("host", ""), rank=r.rank,
            impl=r.impl,
            label=r.label, **{"pass": r.pass_}, status=r.status,
            median_s=s.median if s else None, p20_s=s.p20 if s else None,
            p80_s=s.p80 if s else None, samples=s.samples if s else 0,
            calls_per_sample=s.calls_per_sample if s else 0,
            spread=s.spread if s else None, noisy=bool(s and s.noisy),
            faults_per_call=s.faults_per_call if s else None,
            flops=r.flops, bytes=r.bytes, gflops=None, gbps=None, pct_peak_flops=None,
            pct_peak_bw=None, ratio=None, ratio_lo=None, ratio_hi=None, ratio_rounds=0,
            ratio_wide=False, detail=r.detail)
        if s and s.median > 0:
            rec["gflops"] = r.flops / s.median * 1e-9
            rec["gbps"] = r.bytes / s.median * 1e-9 if r.bytes else None
            if peaks.get("peak_gflops"):
                rec["pct_peak_flops"] = 100 * rec["gflops"] / peaks["peak_gflops"]
            if peaks.get("peak_gbps") and rec["gbps"] is not None:
                rec["pct_peak_bw"] = 100 * rec["gbps"] / peaks["peak_gbps"]
            rec.update(_ratio_fields(s, base.get((r.device, r.row.key, r.pass_)), r.impl))
        out.append(rec)
    return out


def _ratio_fields(s, base_median: float | None, impl: str) -> dict:
    """The record's ratio to torch: the paired estimate and its interval when the two were timed
    together, else (timed apart after a failure) the ratio of the medians, without an interval."""
    if impl == TORCH or not base_median:
        return {}
    if s.ratio is None:
        return {"ratio": s.median / base_median}
    q = s.ratio
    return {"ratio": q.median, "ratio_lo": q.lo, "ratio_hi": q.hi, "ratio_rounds": q.rounds,
            "ratio_wide": q.wide}


RECORD_TYPES = {
    "suites": list, "op": str, "case": str, "params": dict, "dtype": str, "device": str,
    "device_id": str, "host": str, "rank": int, "impl": str,
    "label": str, "pass": str, "status": str, "median_s": (float, type(None)),
    "p20_s": (float, type(None)), "p80_s": (float, type(None)), "samples": int,
    "calls_per_sample": int, "spread": (float, type(None)), "noisy": bool,
    "faults_per_call": (float, int, type(None)),
    "flops": (int, float), "bytes": (int, float), "gflops": (float, type(None)),
    "gbps": (float, type(None)), "pct_peak_flops": (float, type(None)),
    "pct_peak_bw": (float, type(None)), "ratio": (float, type(None)),
    "ratio_lo": (float, type(None)), "ratio_hi": (float, type(None)), "ratio_rounds": int,
    "ratio_wide": bool, "detail": str,
}
# Fields a record of an earlier version of the schema may lack, and what they meant then.
RECORD_DEFAULTS = {"dtype": "float32", "device_id": "", "host": "", "rank": 0}
META_KEYS = ("date", "git_commit", "torch", "python", "dlkern", "command", "threads", "devices",
             "impls", "passes", "budget")


def to_json(results: list[Result], meta: dict) -> dict:
    return {"schema": SCHEMA, "meta": meta, "results": records(results, meta)}


def validate(doc: Any) -> list[str]:
    """Problems with a bench JSON document (empty when it matches the schema)."""
    errs = []
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        return [f"not a {SCHEMA} document (schema: "
                f"{doc.get('schema') if isinstance(doc, dict) else type(doc).__name__})"]
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        errs.append("meta: missing")
    else:
        errs += [f"meta: missing {k!r}" for k in META_KEYS if k not in meta]
    res = doc.get("results")
    if not isinstance(res, list):
        return errs + ["results: not a list"]
    for i, rec in enumerate(res):
        for k, t in RECORD_TYPES.items():
            if k not in rec:
                if k not in RECORD_DEFAULTS:
                    errs.append(f"results[{i}]: missing {k!r}")
            elif not isinstance(rec[k], t) or (t is int and isinstance(rec[k], bool)):
                errs.append(f"results[{i}].{k}: {type(rec[k]).__name__} is not "
                            f"{getattr(t, '__name__', t)}")
        if rec.get("status") not in ("ok", "failed", "skipped"):
            errs.append(f"results[{i}].status: {rec.get('status')!r}")
        if rec.get("pass") not in PASSES:
            errs.append(f"results[{i}].pass: {rec.get('pass')!r}")
        if rec.get("status") == "ok" and not rec.get("median_s"):
            errs.append(f"results[{i}]: ok without a median")
    return errs


def to_csv(results: list[Result], meta: dict) -> str:
    recs = records(results, meta)
    meta_cols = OrderedDict(
        date=meta["date"], git_commit=meta["git_commit"], torch=meta["torch"],
        dlkern_cpu_isa=meta["dlkern"].get("cpu_isa"), threads=meta["threads"].get("torch_intraop"),
        command=meta["command"])
    buf = io.StringIO()
    cols = list(RECORD_TYPES) + ["device_name"] + list(meta_cols)
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for rec in recs:
        row = {k: (";".join(v) if k == "suites" else json.dumps(v) if k == "params" else v)
               for k, v in rec.items()}
        row["device_name"] = meta["devices"].get(rec["device"], {}).get("name", "")
        row.update(meta_cols)
        row["threads"] = _rank(meta, rec["rank"]).get("threads", row["threads"])
        w.writerow(row)
    return buf.getvalue()


# ---- markdown ------------------------------------------------------------------------------

def fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.4g} s" if s >= 1 else f"{s * 1e3:.4g} ms"


def _cell(r: Result | None, bold: bool, fmt=fmt_time) -> str:
    if r is None or r.status == "skipped":
        return "-"
    if r.status == "failed":
        return "FAILED"
    t = fmt(r.median) + (NOISY_MARK if r.stats.noisy else "")
    return f"__{t}__" if bold else t


def _index(results: list[Result]) -> dict:
    return {(r.device, r.row.key, r.impl, r.pass_): r for r in results}


def _rows_of(results: list[Result], device: str, suite: str) -> list:
    seen = OrderedDict()
    for r in results:
        if r.device == device and suite in r.row.suites:
            seen.setdefault(r.row.key, r.row)
    return list(seen.values())


def _impls_in(results: list[Result]) -> list[tuple[str, str]]:
    """(name, label) of the implementations that ran (were checked) in `results`, in order."""
    seen = OrderedDict()
    for r in results:
        if r.status != "skipped" and (r.impl not in seen or r.status == "ok"):
            seen[r.impl] = r.label
    return list(seen.items())


def first_other(impls: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """The implementation the ratio tables compare with torch: the first other one that ran."""
    return next(((n, lb) for n, lb in impls if n != TORCH), (None, None))


def layers_table(results, device, suite, impls, passes, first: str = "Layer") -> str:
    """flux-vs-pytorch's table: one line per (row, framework), a column per pass, the faster
    entry in bold. `first` titles the row column (Layer, Model)."""
    idx = _index(results)
    head = f"|{first}|Framework|" + "|".join(PASS_TITLES[p] for p in passes) + "|"
    lines = [head, "|" + ":---:|" * (2 + len(passes))]
    for row in _rows_of(results, device, suite):
        best = {}
        for p in passes:
            ok = [idx[k].median for k in ((device, row.key, n, p) for n, _ in impls)
                  if k in idx and idx[k].status == "ok"]
            best[p] = min(ok) if len(ok) > 1 else None
        for i, (n, label) in enumerate(impls):
            cells = []
            for p in passes:
                r = idx.get((device, row.key, n, p))
                cells.append(_cell(r, r is not None and r.status == "ok" and r.median == best[p]))
            name = row.case.name if i == 0 else ""
            lines.append(f"|{name}|{label}|" + "|".join(cells) + "|")
    return "\n".join(lines)


def tensorgrad_tables(results, device, suite, impls, passes) -> str:
    """tensorgrad-vs-torch's shape: per op and pass, inputs | torch | custom | slower by."""
    idx = _index(results)
    rows = _rows_of(results, device, suite)
    base = [x for x in impls if x[0] == TORCH]
    others = [x for x in impls if x[0] != TORCH]
    cols = base + others
    dev = "cpu" if device == "cpu" else "cuda"
    out = []
    for op in OrderedDict((r.op, r.spec) for r in rows).items():
        name, spec = op
        out.append(f"#### {spec.title or name}")
        for p in passes:
            out.append(f"##### {PASS_TITLES[p].replace(' Pass', '').replace(' Time', '')}")
            heads = [f"torch {dev}, s." if n == TORCH else f"{label}, s." for n, label in cols]
            ratio_col = others[0][1] if base and others else None
            if ratio_col:
                heads.append(f"{ratio_col} is slower by")
            out.append("| inputs | " + " | ".join(heads) + " |")
            out.append("|---|" + "---:|" * len(heads))
            per_col = [[] for _ in heads]
            for row in (r for r in rows if r.op == name):
                got = [idx.get((device, row.key, n, p)) for n, _ in cols]
                got = [r if r is not None and r.status == "ok" else None for r in got]
                vals = [r.median if r else None for r in got]
                wide = False
                if ratio_col:
                    q = (_ratio_fields(got[len(base)].stats, vals[0], others[0][0])
                         if got[len(base)] else {})
                    vals.append(q.get("ratio"))
                    wide = q.get("ratio_wide", False)
                cells = []
                for j, v in enumerate(vals):
                    if v is None:
                        r = idx.get((device, row.key, cols[j][0], p)) if j < len(cols) else None
                        cells.append("FAILED" if r is not None and r.status == "failed" else "-")
                    else:
                        per_col[j].append(v)
                        cells.append(f"{v:.5g}" + (WIDE_MARK if wide and j == len(cols) else ""))
                out.append(f"| {row.case.name} | " + " | ".join(cells) + " |")
            overall = [f"{statistics.median(v):.5g}" if v else "-" for v in per_col]
            out.append("| overall | " + " | ".join(overall) + " |")
            out.append("")
    return "\n".join(out).rstrip()


def linear_sweep_raw_lines(results, device, suite, impls, passes) -> str:
    """lux-vs-flux-dense's raw lines, one block per implementation and sweep group."""
    names = {"forward": "Forward Pass", "total": "Forward Pass + Backward Pass",
             "backward": "Backward Pass", "inference": "Inference"}
    idx = _index(results)
    rows = _rows_of(results, device, suite)
    dev = "CPU" if device == "cpu" else "GPU"
    out = ["```text"]
    for n, label in impls:
        for group in OrderedDict((r.case.group or r.op, None) for r in rows):
            out.append(f"{label} {group}")
            for row in (r for r in rows if (r.case.group or r.op) == group):
                sweep = (f"{row.case.sweep[0]} = {row.case.sweep[1]}" if row.case.sweep
                         else row.case.name)
                for p in passes:
                    r = idx.get((device, row.key, n, p))
                    if r is None or r.status == "skipped":
                        continue
                    val = "FAILED" if r.status == "failed" else f"{r.median:.9g}s"
                    out.append(f"    {names[p]} {dev} | {sweep}: {val}")
            out.append("")
    out.append("```")
    return "\n".join(out)


def _fmt_num(v, spec="{:.3g}"):
    return "-" if v is None else spec.format(v)


def ratio_table(recs: list[dict], device: str, first: str | None, label: str = "") -> str:
    if not first:
        return ""
    label = label or first
    lines = [f"| row | pass | torch | {label} | ratio | 95% interval | rounds | "
             f"spread (torch / {label}) |", "|---|---|---:|---:|---:|---|---:|---|"]
    base = {(r["op"], r["case"], r["pass"]): r for r in recs
            if r["device"] == device and r["impl"] == TORCH}
    n = 0
    for r in recs:
        if r["device"] != device or r["impl"] != first:
            continue
        b = base.get((r["op"], r["case"], r["pass"]))
        if b is None:
            continue
        ratio = r["ratio"]
        cell = "FAILED" if r["status"] == "failed" else (f"**{ratio:.3f}**" if ratio else "-")
        noisy = " (noisy)" if r["noisy"] or b["noisy"] else ""
        lines.append(f"| {r['op']} {r['case']} | {r['pass']} | {fmt_time(b['median_s'])} | "
                     f"{fmt_time(r['median_s'])} | {cell} | {interval_text(r)} | "
                     f"{r['ratio_rounds'] or '-'} | "
                     f"{_fmt_num(b['spread'], '{:.0%}')} / {_fmt_num(r['spread'], '{:.0%}')}"
                     f"{noisy} |")
        n += 1
    return "\n".join(lines) if n else ""


def interval_text(rec: dict) -> str:
    """A record's ratio interval, '0.912 - 0.934', with WIDE_MARK when it is wider than the
    target the sampling aimed for; '-' when it has none."""
    if rec["status"] != "ok" or rec["ratio"] is None:
        return "-"
    if rec["ratio_lo"] is None:
        return "none"
    return (f"{rec['ratio_lo']:.3f} - {rec['ratio_hi']:.3f}"
            + (WIDE_MARK if rec["ratio_wide"] else ""))


def roofline_table(recs: list[dict], device: str) -> str:
    lines = ["| row | pass | impl | median | p20 - p80 | samples | GFLOP/s | % peak | GB/s | "
             "% peak | faults/call |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in recs:
        if r["device"] != device or r["status"] != "ok":
            continue
        lines.append(
            f"| {r['op']} {r['case']} | {r['pass']} | {r['label']} | {fmt_time(r['median_s'])}"
            f"{NOISY_MARK if r['noisy'] else ''} | {fmt_time(r['p20_s'])} - {fmt_time(r['p80_s'])}"
            f" | {r['samples']} | {_fmt_num(r['gflops'], '{:.1f}')} | "
            f"{_fmt_num(r['pct_peak_flops'], '{:.1f}')} | {_fmt_num(r['gbps'], '{:.1f}')} | "
            f"{_fmt_num(r['pct_peak_bw'], '{:.1f}')} | "
            f"{_fmt_num(r['faults_per_call'] if (r['faults_per_call'] or 0) >= 0 else None, '{:.1f}')} |")
    return "\n".join(lines)


# How each measured peak is printed in a device header: (key in info["peaks"], format).
_PEAK_TEXT = {
    "cpu": (("fma_gflops_avx2", "FMA {:.0f} GFLOP/s with AVX2"),
            ("fma_gflops_avx512", "{:.0f} GFLOP/s with AVX-512"),
            ("copy_gbps", "copy bandwidth {:.1f} GB/s")),
    "cuda": (("matmul_fp32_tflops", "fp32 matmul {:.1f} TFLOP/s (TF32 off)"),
             ("copy_gbps", "device copy {:.0f} GB/s")),
}


def device_header(info: dict) -> str:
    cpu = info.get("device") == "cpu"
    head = (f"## CPU USED --- {info['name']}, {info['threads']} threads" if cpu
            else f"## GPU USED --- {info['name']} (torch's cuBLAS/cuDNN in float32, TF32 off)")
    pk = dict(info.get("peaks") or {})
    if pk.get("matmul_fp32_gflops"):
        pk["matmul_fp32_tflops"] = pk["matmul_fp32_gflops"] / 1e3
    parts = [fmt.format(pk[k]) for k, fmt in _PEAK_TEXT["cpu" if cpu else "cuda"] if pk.get(k)]
    if info.get("clocks"):
        c = info["clocks"]
        parts.append(f"clocks SM {c.get('sm_mhz')} / max {c.get('sm_max_mhz')} MHz, "
                     f"memory {c.get('mem_mhz')} MHz")
    if not parts:
        return head
    return head + "\n\nPeaks measured this run (the % peak columns): " + "; ".join(parts) + "."


def suite_order(results: list[Result]) -> list[str]:
    present = OrderedDict()
    for r in results:
        for s in r.row.suites:
            present[s] = None
    std = [s for s in STANDARD_SUITES if s in present]
    rest = sorted(s for s in present if s not in STANDARD_SUITES and s != USER_SUITE)
    return std + rest + ([USER_SUITE] if USER_SUITE in present else [])


TIMES_TEXT = (f"Times are medians over interleaved samples (bench/timing.py), {NOISY_MARK} "
              "marking a spread (p80-p20)/median above 10%; a ratio is the median of the "
              "per-round ratios of samples taken back to back, with its 95% interval, "
              f"{WIDE_MARK} marking one that ended wider than the target")


def markdown(results: list[Result], meta: dict, passes: list[str]) -> str:
    recs = records(results, meta)
    out = ["# dlkern layer benchmarks", ""]
    out.append(f"{meta['date'][:10]} · torch {meta['torch']} · dlkern CPU path "
               f"{meta['dlkern'].get('cpu_isa')} · git {meta['git_commit'][:12]}  ")
    out.append(f"command: `{meta['command']}`  ")
    target = meta["budget"].get("target_ratio")
    out.append(f"{TIMES_TEXT}{f' (±{target:.0%})' if target else ''}; "
               f"malloc {meta.get('malloc', 'default')}.")
    out += run_warnings(meta)
    for device in OrderedDict((r.device, None) for r in results):
        info = meta["devices"].get(device, {"device": device, "name": device})
        out += ["", device_header(info)]
        for dtype, dt_results in by_dtype([r for r in results if r.device == device]).items():
            dt_recs = [r for r in recs if r["device"] == device and r["dtype"] == dtype]
            impls = _impls_in(dt_results)
            if not impls:
                continue            # every row skipped at this dtype: the Skipped list says why
            first_impl, first_label = first_other(impls)
            for suite in suite_order(dt_results):
                out += ["", f"### Suite `{suite}` · {dtype}", ""]
                if suite == "tensorgrad":
                    out.append(tensorgrad_tables(dt_results, device, suite, impls, passes))
                elif suite == "linear-sweep":
                    out.append(linear_sweep_raw_lines(dt_results, device, suite, impls, passes))
                else:
                    out.append(layers_table(dt_results, device, suite, impls, passes))
            out += ratio_section(dt_recs, device, first_impl, first_label, dtype)
            out += ["", f"### Roofline · {dtype}", "", ROOFLINE_TEXT, "",
                    roofline_table(dt_recs, device)]
        out += failed_and_skipped([r for r in recs if r["device"] == device])
    return "\n".join(out) + "\n"


def _cores(cores: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    spans, start = [], None
    for i, c in enumerate(cores):
        if start is None:
            start = c
        if i + 1 == len(cores) or cores[i + 1] != c + 1:
            spans.append(f"{start}-{c}" if c != start else f"{c}")
            start = None
    return ",".join(spans)


def run_warnings(meta: dict) -> list[str]:
    """Lines under a report's header: threads that disagree, the torchrun ranks that shared the
    run, and the ranks whose run raised."""
    out = []
    th = meta.get("threads") or {}
    if th and not th.get("consistent", True):
        out.append(f"\n**Warning**: thread counts disagree (torch {th.get('torch_intraop')}, "
                   f"OpenMP {th.get('omp')}, MKL {th.get('mkl')}): CPU ratios are skewed.")
    ranks = meta.get("ranks") or []
    if len(ranks) > 1:
        each = "; ".join(f"rank {r['rank']} on {r['host']}: cores {_cores(r['cores'])}, "
                         f"{r['threads']} thread(s){', ' + r['cuda'] if r.get('cuda') else ''}"
                         for r in ranks)
        out.append(f"\n{len(ranks)} torchrun ranks shared the rows ({each}); each row's "
                   "record says which one measured it. Ranks on one host share its memory "
                   "bandwidth and caches, so their timings perturb each other.")
    for e in meta.get("rank_errors") or []:
        out.append(f"\n**FAILED**: {e.splitlines()[0]} (the rows it did not measure are missing) "
                   f"{e.splitlines()[-1] if len(e.splitlines()) > 1 else ''}")
    return out


ROOFLINE_TEXT = ("FLOPs and bytes from the registry's model of each op (minimum traffic: inputs "
                 "read once, outputs written once). Problems that fit in cache can exceed the "
                 "streaming-bandwidth peak, which is measured on buffers far larger than the "
                 "last-level cache. faults/call counts minor page faults per call during the "
                 "timed samples: a call that faults in fresh pages for its outputs pays the "
                 "allocator, not the kernel.")


def by_dtype(results: list[Result]) -> OrderedDict:
    """{dtype: its results}, in the order the run took the dtypes."""
    out = OrderedDict()
    for r in results:
        out.setdefault(r.row.dtype, []).append(r)
    return out


def ratio_section(recs: list[dict], device: str, first: str | None, label: str | None,
                  dtype: str) -> list[str]:
    """The ratio table of `first` against torch, with its heading (nothing without one)."""
    rt = ratio_table(recs, device, first, label) if first else ""
    if not rt:
        return []
    return ["", f"### Ratio {label} / torch · {dtype} (< 1: {label} is faster)", "", rt]


def failed_and_skipped(recs: list[dict], with_op: bool = True) -> list[str]:
    """The FAILED rows with their errors, and the skipped ones grouped by reason."""
    def what(r):
        return (f"{r['op']} " if with_op else "") + f"{r['case']} ({r['dtype']})"
    out = []
    fails = list(OrderedDict.fromkeys(f"- **FAILED** {what(r)} [{r['label']}]: {r['detail']}"
                                      for r in recs if r["status"] == "failed"))
    if fails:
        out += ["", "### FAILED (not timed)", ""] + fails
    skips = OrderedDict()
    for r in recs:
        if r["status"] == "skipped":
            skips.setdefault((r["impl"], r["detail"]), []).append(what(r))
    if skips:
        out += ["", "### Skipped", ""]
        for (impl, why), rows in skips.items():
            n = len(OrderedDict.fromkeys(rows))
            out.append(f"- {impl}: {why} ({n} row{'s' if n != 1 else ''})")
    return out

"""Compare two bench.layers / bench.models JSON results row by row, or judge an A/A run.

    python -m bench.compare OLD.json NEW.json [--threshold 0.10]
    python -m bench.compare --aa RUN.json [--tolerance 0.03]

Rows are matched on (device, op, case, dtype, implementation, pass). Where both runs have a paired
ratio to torch with its 95% interval, the intervals decide: the row REGRESSED when the new
interval lies wholly above the old one and the ratio grew by more than --min-change (3%: two
runs of the same code differ by 1-2% that no interval over rounds sees), is faster when the
reverse holds, and is unchanged when the intervals overlap, however far apart the medians are.
Elsewhere (torch itself, rows timed apart, too few rounds for an interval) the medians decide:
new/old > 1 + threshold regressed. A row checked and timed in OLD that FAILED in NEW regressed.

--aa judges a bench.layers run of `--impl torch-again,torch` (torch timed against itself): it
passes when no torch-again row FAILED, no torch-again interval that reached the target lies
wholly outside 1 +- tolerance (a median alone 3% off is noise on a 10 us row), and the ratios are not on one side of 1 more often than chance
explains (a sign test at a 1% false alarm rate, ties left out: an order effect or any other
advantage the harness gives one side shows there).
The intervals that exclude 1 are counted, not judged: on the shared machine they miss more
often than 5% (per-allocation and per-period offsets of 1-2% that the rounds of one timing do
not see; docs/benchmarks.md).

Exit code 1 when a row regressed or the A/A run is biased or has no torch-again rows, 2 on bad
arguments or when a file is missing or not a result of this schema, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from .impls import TORCH_AGAIN
from .report import SCHEMA, WIDE_MARK, fmt_time, validate

AA_FALSE_ALARM = 0.01


def load(path: str) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"bench.compare: cannot read {path}: {e}") from None
    errs = validate(doc)
    if errs:
        raise ValueError(f"bench.compare: {path} is not a {SCHEMA} result: " + "; ".join(errs[:5]))
    return doc


KEY = ("device", "op", "case", "dtype", "impl", "pass")


def _key(r):
    """What a row is matched on; a record of the schema before the dtype axis is float32."""
    return tuple(r.get(k, "float32") if k == "dtype" else r[k] for k in KEY)


def _has_interval(r) -> bool:
    return (r["status"] == "ok" and r["ratio"] is not None and r["ratio_lo"] is not None
            and r["ratio_hi"] is not None)


def _ratio_cell(r) -> str:
    return f"{r['ratio']:.3f} ({r['ratio_lo']:.3f} - {r['ratio_hi']:.3f})"


def verdict(a: dict, b: dict, threshold: float, min_change: float
            ) -> tuple[str, str, str, str, bool]:
    """(old cell, new cell, new/old, flag, regressed) for one matched row."""
    if a["status"] == "ok" and b["status"] == "failed":
        return fmt_time(a["median_s"]), "FAILED", "-", "**REGRESSION** (now FAILED)", True
    if a["status"] != "ok" or b["status"] != "ok":
        return "-", "-", "-", f"{a['status']} -> {b['status']}", False
    if _has_interval(a) and _has_interval(b):
        change = b["ratio"] / a["ratio"]
        cells = _ratio_cell(a), _ratio_cell(b), f"{change:.3f}"
        if b["ratio_lo"] > a["ratio_hi"] and change > 1 + min_change:
            return (*cells, "**REGRESSION** (intervals)", True)
        if b["ratio_hi"] < a["ratio_lo"] and change < 1 / (1 + min_change):
            return (*cells, "faster (intervals)", False)
        return (*cells, "", False)
    ratio = b["median_s"] / a["median_s"]
    flag, regressed = "", ratio > 1 + threshold
    if regressed:
        flag = "**REGRESSION** (medians)"
    elif ratio < 1 / (1 + threshold):
        flag = "faster (medians)"
    if (a["noisy"] or b["noisy"]) and flag:
        flag += " (noisy)"
    return fmt_time(a["median_s"]), fmt_time(b["median_s"]), f"{ratio:.3f}", flag, regressed


def matched(old_records, new_records):
    """(key, old record, new record) for every row of NEW that OLD has too, in NEW's order."""
    o = {_key(r): r for r in old_records}
    for r in new_records:
        k = _key(r)
        if k in o:
            yield k, o[k], r


def compare(old: dict, new: dict, threshold: float, min_change: float = 0.03
            ) -> tuple[list[str], int]:
    """Markdown lines and the number of regressions."""
    o = {_key(r): r for r in old["results"]}
    n = {_key(r): r for r in new["results"]}
    lines = [f"old: {old['meta']['date']} git {old['meta']['git_commit'][:12]} torch "
             f"{old['meta']['torch']}  ", f"new: {new['meta']['date']} git "
             f"{new['meta']['git_commit'][:12]} torch {new['meta']['torch']}  ",
             "old and new: the ratio to torch with its 95% interval where the run has one, else "
             "the median time", "",
             "| device | row | dtype | impl | pass | old | new | new/old | |",
             "|---|---|---|---|---|---:|---:|---:|---|"]
    regressions = 0
    for k, a, b in matched(old["results"], new["results"]):
        dev, op, case, dtype, impl, pass_ = k
        old_s, new_s, change, flag, regressed = verdict(a, b, threshold, min_change)
        regressions += regressed
        lines.append(f"| {dev} | {op} {case} | {dtype} | {impl} | {pass_} | {old_s} | {new_s} | "
                     f"{change} | {flag} |")
    only_old = [k for k in o if k not in n]
    only_new = [k for k in n if k not in o]
    if only_old:
        lines += ["", f"only in OLD ({len(only_old)}): " +
                  ", ".join(" ".join(k) for k in only_old[:20])]
    if only_new:
        lines += ["", f"only in NEW ({len(only_new)}): " +
                  ", ".join(" ".join(k) for k in only_new[:20])]
    if not any(k in o for k in n):
        lines += ["", "no row is in both runs: nothing compared"]
    lines += ["", f"{regressions} regression(s) (now FAILED; intervals apart and the ratio up by "
              f"more than {min_change:.0%}; or, where there is no interval, medians beyond "
              f"{threshold:.0%})"]
    return lines, regressions


def sign_bounds(n: int, false_alarm: float = AA_FALSE_ALARM) -> tuple[int, int]:
    """(lo, hi): with no bias the count of A/A ratios above 1 among n is Binomial(n, 1/2); a count
    below lo or above hi has a two-sided probability under `false_alarm`."""
    lo, tail = 0, 0.0
    while True:
        tail += math.comb(n, lo) / 2 ** n
        if 2 * tail >= false_alarm:
            return lo, n - lo
        lo += 1


def judge_aa(doc: dict, tolerance: float) -> tuple[list[str], bool]:
    """Markdown lines and whether the A/A run is unbiased (see the module doc)."""
    rows = [r for r in doc["results"] if r["impl"] == TORCH_AGAIN]
    failed = [r for r in rows if r["status"] == "failed"]
    recs = [r for r in rows if r["status"] == "ok" and r["ratio"] is not None]
    if not recs and not failed:
        return [f"bench.compare --aa: no timed {TORCH_AGAIN} rows (run bench.layers --impl "
                f"{TORCH_AGAIN},torch)"], False
    lines = ["| device | row | dtype | pass | ratio | 95% interval | |",
             "|---|---|---|---|---:|---|---|"]
    off = misses = 0
    for r in failed:
        lines.append(f"| {r['device']} | {r['op']} {r['case']} | {_key(r)[3]} | {r['pass']} | "
                     "FAILED | - | "
                     f"{r['detail'].splitlines()[0] if r['detail'] else ''} |")
    for r in recs:
        flags = []
        judged = _has_interval(r) and not r["ratio_wide"]
        # a bias shown by the interval, not by a median the noise put 3% off
        if judged and (r["ratio_lo"] > 1 + tolerance or r["ratio_hi"] < 1 - tolerance):
            flags.append(f"off by more than {tolerance:.0%}")
            off += 1
        if _has_interval(r) and not r["ratio_lo"] <= 1 <= r["ratio_hi"]:
            flags.append("interval excludes 1")
            misses += 1
        iv = (f"{r['ratio_lo']:.3f} - {r['ratio_hi']:.3f}{WIDE_MARK if r['ratio_wide'] else ''}"
              if _has_interval(r) else "none")
        lines.append(f"| {r['device']} | {r['op']} {r['case']} | {_key(r)[3]} | {r['pass']} | "
                     f"{r['ratio']:.3f} | {iv} | {', '.join(flags)} |")
    signed = [r["ratio"] for r in recs if r["ratio"] != 1]
    above = sum(q > 1 for q in signed)
    lo, hi = sign_bounds(len(signed))
    ok = not failed and off == 0 and lo <= above <= hi
    with_interval = sum(_has_interval(r) for r in recs)
    lines += ["", f"A/A: {len(recs)} rows timed, {len(failed)} FAILED; {off} off by more than "
              f"{tolerance:.0%} (intervals wholly outside 1 +- {tolerance:.0%}, of those not "
              f"marked {WIDE_MARK}); {above} of "
              f"{len(signed)} above 1 (ties left out; no bias: {lo} to {hi} at a "
              f"{AA_FALSE_ALARM:.0%} false alarm rate); {misses} of {with_interval} intervals "
              f"exclude 1 (about {0.05 * with_interval:.1f} expected if the rounds were all the "
              f"noise there is; see docs/benchmarks.md): {'unbiased' if ok else 'BIASED'}"]
    return lines, ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", metavar="FILE", help="OLD.json NEW.json, or RUN.json with --aa")
    ap.add_argument("--threshold", type=float, default=0.10,
                    help="where a row has no interval: the relative slowdown of the medians that "
                         "counts as a regression (default 0.10)")
    ap.add_argument("--min-change", type=float, default=0.03,
                    help="where both rows have intervals: how much the ratio must move, beyond "
                         "intervals that are apart, to count (default 0.03)")
    ap.add_argument("--aa", action="store_true", help="judge one A/A run (--impl torch-again,torch)")
    ap.add_argument("--tolerance", type=float, default=0.03,
                    help="--aa: how far from 1 an A/A ratio may be (default 0.03)")
    args = ap.parse_args(argv)
    want = 1 if args.aa else 2
    if len(args.files) != want:
        print(f"bench.compare: expected {'RUN.json' if args.aa else 'OLD.json NEW.json'}, got "
              f"{len(args.files)} file(s)", file=sys.stderr)
        return 2
    if not all(v >= 0 for v in (args.threshold, args.tolerance, args.min_change)):
        print("bench.compare: --threshold, --min-change and --tolerance must be numbers >= 0",
              file=sys.stderr)
        return 2
    try:
        docs = [load(f) for f in args.files]
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    if args.aa:
        lines, ok = judge_aa(docs[0], args.tolerance)
        print("\n".join(lines))
        return 0 if ok else 1
    lines, regressions = compare(docs[0], docs[1], args.threshold, args.min_change)
    print("\n".join(lines))
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())

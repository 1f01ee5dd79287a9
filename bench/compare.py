"""Compare two bench.layers JSON results: per row, the ratio new/old of the medians.

    python -m bench.compare OLD.json NEW.json [--threshold 0.10]

A row regresses when new/old > 1 + threshold, or when it was checked and timed in OLD and FAILED
in NEW. Rows are matched on (device, op, case, implementation, pass). Exit code 1 when any row
regressed, 2 when a file is missing or not a bench.layers result, 0 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys

from .report import SCHEMA, fmt_time, validate


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


def _key(r):
    return (r["device"], r["op"], r["case"], r["impl"], r["pass"])


def compare(old: dict, new: dict, threshold: float) -> tuple[list[str], int]:
    """Markdown lines and the number of regressions."""
    o = {_key(r): r for r in old["results"]}
    n = {_key(r): r for r in new["results"]}
    lines = [f"old: {old['meta']['date']} git {old['meta']['git_commit'][:12]} torch "
             f"{old['meta']['torch']}  ", f"new: {new['meta']['date']} git "
             f"{new['meta']['git_commit'][:12]} torch {new['meta']['torch']}", "",
             "| device | row | impl | pass | old | new | new/old | |",
             "|---|---|---|---|---:|---:|---:|---|"]
    regressions = 0
    for k in n:
        if k not in o:
            continue
        a, b = o[k], n[k]
        dev, op, case, impl, pass_ = k
        flag = ""
        if a["status"] == "ok" and b["status"] == "failed":
            ratio_s, flag = "-", "**REGRESSION** (now FAILED)"
            regressions += 1
        elif a["status"] == "ok" and b["status"] == "ok":
            ratio = b["median_s"] / a["median_s"]
            ratio_s = f"{ratio:.3f}"
            if ratio > 1 + threshold:
                flag = "**REGRESSION**"
                regressions += 1
            elif ratio < 1 / (1 + threshold):
                flag = "faster"
            if (a["noisy"] or b["noisy"]) and flag:
                flag += " (noisy)"
        else:
            ratio_s = "-"
            flag = f"{a['status']} -> {b['status']}"
        lines.append(f"| {dev} | {op} {case} | {impl} | {pass_} | {fmt_time(a['median_s'])} | "
                     f"{fmt_time(b['median_s'])} | {ratio_s} | {flag} |")
    only_old = [k for k in o if k not in n]
    only_new = [k for k in n if k not in o]
    if only_old:
        lines += ["", f"only in OLD ({len(only_old)}): " +
                  ", ".join(" ".join(k) for k in only_old[:20])]
    if only_new:
        lines += ["", f"only in NEW ({len(only_new)}): " +
                  ", ".join(" ".join(k) for k in only_new[:20])]
    lines += ["", f"{regressions} regression(s) beyond {threshold:.0%}"]
    return lines, regressions


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threshold", type=float, default=0.10,
                    help="relative slowdown that counts as a regression (default 0.10)")
    args = ap.parse_args(argv)
    if args.threshold < 0:
        print("bench.compare: --threshold must be >= 0", file=sys.stderr)
        return 2
    try:
        old, new = load(args.old), load(args.new)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    lines, regressions = compare(old, new, args.threshold)
    print("\n".join(lines))
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())

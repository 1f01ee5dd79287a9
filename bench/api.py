"""The Python API over `python -m bench.layers`, for notebooks and scripts:

    import bench
    df = bench.run(ops="softmax", suites="tensorgrad", impls=["custom", my_softmax, "torch"],
                   passes="forward", quick=True)
    bench.ratios(df)                        # (device, op, case, dtype) x pass -> ratio to torch
    bench.compare_frames(old_df, new_df)    # what python -m bench.compare does, as a DataFrame

`run` takes the command line's options as keyword arguments (lists or comma-separated strings;
`dtype` also torch dtypes: dtype=[torch.float32, torch.bfloat16])
and returns one DataFrame row per workload x implementation x device x pass, with the JSON
schema's columns (bench/report.py RECORD_TYPES; `params` is a dict). Implementations may be
names as for --impl, or callables, mappings op -> callable, or factories (spec, device) given
directly (bench/plugins.py), labelled with their __name__. Every implementation is checked before
it is timed, exactly as on the command line; a FAILED one is a row with status "failed" (the
run carries on past it). Under torchrun rank 0 gets every rank's rows, the other ranks None. Bad arguments raise ValueError with the command line's message.
pandas is imported only here: the command lines do not need it.
"""
from __future__ import annotations

import math

from . import compare as compare_mod
from . import plugins
from .cli import UsageError, apply_threads, split_csv


def _csv(v) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else ",".join(map(str, v))


def _dtypes(v) -> str | None:
    """dtype names or torch dtypes (one, or a list) as --dtype's text."""
    if v is None or isinstance(v, str):
        return v
    items = v if isinstance(v, (list, tuple)) else [v]
    return ",".join(str(d).removeprefix("torch.") for d in items)


def _impl_names(impls) -> list[str]:
    """--impl names for `impls`, registering the Python objects among them."""
    if isinstance(impls, str):
        return split_csv(impls)
    names = []
    for i, obj in enumerate(impls):
        if isinstance(obj, str):
            names.append(obj)
            continue
        name = getattr(obj, "__name__", None) or f"impl{i}"
        plugins.register_object(name, obj)
        names.append(name)
    return names


def run(ops=None, suites=None, impls=("custom", "torch"), device=None, passes=None, shapes=None,
        threads=None, quick=False, budget=None, seeds=3, flush_l2=False, peaks=False,
        progress=False, dtype=None):
    """Check and time, as `python -m bench.layers` does; the results as a pandas DataFrame."""
    import pandas as pd

    from . import layers, report
    argv = ["--impl", ",".join(_impl_names(impls)), "--seeds", str(seeds), "--keep-going"]
    for flag, v in (("--ops", _csv(ops)), ("--suite", _csv(suites)), ("--device", _csv(device)),
                    ("--pass", _csv(passes)), ("--shapes", shapes), ("--budget", budget),
                    ("--threads", threads), ("--dtype", _dtypes(dtype))):
        if v is not None:
            argv += [flag, str(v)]
    argv += ["--quick"] * bool(quick) + ["--flush-l2"] * bool(flush_l2) + ["--no-peaks"] * (not peaks)
    args = layers.parse_args(argv)
    try:
        apply_threads(args.threads, "bench.run")
        rows, devices, cfg = layers.build(args)
    except UsageError as e:
        raise ValueError(str(e).replace("bench.layers: --", "bench.run: ")) from None
    measured = layers.measure(argv, args, rows, devices, cfg, progress=progress)
    if measured is None:
        return None        # a torchrun rank other than 0 (bench/dist.py): rank 0 has the rows
    results, meta, _ = measured
    df = pd.DataFrame(report.records(results, meta))
    df.attrs["meta"] = meta
    return df


def ratios(df, impl: str | None = None):
    """(device, op, case, dtype) x pass -> the ratio of `impl` (default: the first that is not
    torch) to torch, from a DataFrame of `run`."""
    others = [i for i in dict.fromkeys(df["impl"]) if i != "torch"]
    if not others:
        raise ValueError("bench.ratios: the results hold no implementation besides torch")
    impl = impl or others[0]
    sel = df[(df["impl"] == impl) & (df["status"] == "ok")]
    return sel.pivot_table(index=["device", "op", "case", "dtype"], columns="pass", values="ratio",
                           sort=False)


def _records(df) -> list[dict]:
    """The DataFrame's rows as the JSON records they came from (pandas' NaN back to None)."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in df.to_dict("records")]


def compare_frames(old, new, threshold: float = 0.10, min_change: float = 0.03):
    """Row by row what `python -m bench.compare` decides (intervals where both runs have them,
    else medians): a DataFrame with old, new, new/old, flag and regressed per matched row."""
    import pandas as pd
    key = list(compare_mod.KEY)
    out = []
    for k, a, b in compare_mod.matched(_records(old), _records(new)):
        old_s, new_s, change, flag, regressed = compare_mod.verdict(a, b, threshold, min_change)
        out.append(dict(zip(key, k), old=old_s, new=new_s, change=change, flag=flag,
                        regressed=regressed))
    return pd.DataFrame(out, columns=key + ["old", "new", "change", "flag", "regressed"])

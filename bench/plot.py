"""`--plot`: time and throughput against problem size, per implementation; one row of panels per
(op, pass), one figure per device, like the seeds' layer plot.

matplotlib is an optional dependency (`pip install -e .[plot]`): plotting is the job it does
better than hand-written code. Without it `--plot` is refused before the run starts.
"""
from __future__ import annotations

import os
from collections import OrderedDict


def available() -> str | None:
    """None when plotting works, else the one-line reason."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return ("bench.layers: --plot needs matplotlib, which is not installed "
                "(pip install matplotlib, or pip install -e '.[plot]')")
    return None


def _x(rec: dict) -> tuple[float, str]:
    """x position and axis label: the sweep value when the case is part of a sweep, else the
    bytes the forward pass moves (a size measure every op has)."""
    return rec["bytes"] / 1e6, "problem size (MB moved by the pass)"


def series_label(recs: list[dict]):
    """A record's curve (bar) name: its implementation's label, with its dtype when the run has
    more than one."""
    several = len({r.get("dtype", "float32") for r in recs}) > 1
    return lambda r: r["label"] + (f" {r['dtype']}" if several else "")


def plot(recs: list[dict], out_dir: str, sweep: dict | None = None) -> list[str]:
    """Writes one PNG per device into out_dir; returns the paths. `sweep` maps (op, case) to the
    swept value for cases that are part of a sweep (plotted against it instead of size)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sweep or {}
    series = series_label(recs)
    paths = []
    for device in OrderedDict((r["device"], None) for r in recs):
        ok = [r for r in recs if r["device"] == device and r["status"] == "ok"]
        panels = list(OrderedDict(((r["op"], r["pass"]), None) for r in ok))
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.2 * len(panels)), squeeze=False)
        for (op, pass_), (ax_t, ax_g) in zip(panels, axes):
            recs_p = [r for r in ok if r["op"] == op and r["pass"] == pass_]
            swept = all((r["op"], r["case"]) in sweep for r in recs_p)
            # throughput in the unit that bounds the op: bytes for low arithmetic intensity
            intensity = sum(r["flops"] for r in recs_p) / max(sum(r["bytes"] for r in recs_p), 1)
            tput, tlabel = ("gbps", "GB/s") if intensity < 4 else ("gflops", "GFLOP/s")
            xlabel = None
            for label in OrderedDict((series(r), None) for r in recs_p):
                pts = []
                for r in recs_p:
                    if series(r) != label:
                        continue
                    if swept:
                        name, val = sweep[(r["op"], r["case"])]
                        x, xlabel = float(val), name
                    else:
                        x, xlabel = _x(r)
                    pts.append((x, r["median_s"], r[tput] or 0.0))
                pts.sort()
                xs = [p[0] for p in pts]
                # cases of equal size (softmax over dim 0 and dim -1) are points, not a curve
                style = "-" if len(set(xs)) == len(xs) else "none"
                ax_t.plot(xs, [p[1] * 1e3 for p in pts], marker="o", linestyle=style, label=label)
                ax_g.plot(xs, [p[2] for p in pts], marker="o", linestyle=style, label=label)
            for ax, ylab in ((ax_t, "time (ms)"), (ax_g, tlabel)):
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_xlabel(xlabel or "")
                ax.set_ylabel(ylab)
                ax.set_title(f"{op} {pass_} ({device})")
                ax.grid(True, which="both", alpha=0.3)
                ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"layers-{device}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_models(recs: list[dict], out_dir: str) -> list[str]:
    """bench.models --plot: per device, one panel per pass, a group of bars per model (one bar
    per implementation, seconds on a log axis). Writes models-<device>.png; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for device in OrderedDict((r["device"], None) for r in recs):
        ok = [r for r in recs if r["device"] == device and r["status"] == "ok"]
        passes = list(OrderedDict((r["pass"], None) for r in ok))
        if not passes:
            continue
        models = list(OrderedDict((r["case"], None) for r in ok))
        series = series_label(recs)
        labels = list(OrderedDict((series(r), None) for r in ok))
        fig, axes = plt.subplots(len(passes), 1, figsize=(max(6, 1.3 * len(models) + 2),
                                                           2.8 * len(passes)), squeeze=False)
        width = 0.8 / max(len(labels), 1)
        for ax, pass_ in zip(axes[:, 0], passes):
            for j, label in enumerate(labels):
                t = {r["case"]: r["median_s"] for r in ok if r["pass"] == pass_ and
                     series(r) == label}
                xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(models))]
                ax.bar(xs, [t.get(m, 0.0) for m in models], width, label=label)
            ax.set_xticks(range(len(models)))
            ax.set_xticklabels(models, fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("seconds")
            ax.set_title(f"{pass_} ({device})")
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, f"models-{device}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths

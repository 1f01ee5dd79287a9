"""--profile DIR: one extra call per (row, implementation, pass), after its timing and outside
the statistics, recorded with torch.profiler (CPU activities, and CUDA's on a GPU) under a
record_function label naming the row, implementation and pass, written as a Chrome trace
(`DIR/<label>.json`: open it in Perfetto, chrome://tracing or TensorBoard's profiler plugin)."""
from __future__ import annotations

import os
import re

import torch


def trace_path(directory: str, label: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_")[:150]
    return os.path.join(directory, f"{slug}.json")


def trace_call(directory: str, label: str, fn, context, device: str) -> str:
    """Run fn() once inside `context()` under the profiler; returns the trace file written."""
    cuda = device.startswith("cuda")
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with context():
        with torch.profiler.profile(activities=activities) as prof:
            with torch.profiler.record_function(label):
                fn()
                if cuda:
                    torch.cuda.synchronize()
    os.makedirs(directory, exist_ok=True)
    path = trace_path(directory, label)
    prof.export_chrome_trace(path)
    return path


def tracer(directory: str | None, device: str, what: str, labels: dict[str, str]):
    """runner.time_passes's `profile` callback for --profile DIR (None without it): a trace of
    one call per implementation and pass, labelled "<device> <what> <label> <pass>"."""
    if not directory:
        return None

    def profile(name, pass_, fn, context):
        trace_call(directory, f"{device} {what} {labels[name]} {pass_}", fn, context, device)
    return profile

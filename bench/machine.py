"""What the run ran on, and this machine's ceilings, measured once per run (not quoted from a data
sheet: clocks, neighbours and power limits of a shared cloud machine move them).

CPU: the float32 FMA throughput of a register-only loop at the widest vector width the CPU has
(dlkern's kernels stop at AVX2, torch's use AVX-512 where present, so both widths are reported and
the wider one is "the peak"), and the streaming bandwidth of a copy over buffers 8x the last-level
cache, counted as bytes read + written, on the run's thread count. GPU: a large float32 matmul
with TF32 off, and a device-to-device copy, both timed with CUDA events.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [x for x in ("avx2", "fma", "avx512f") if x in have]
    except OSError:
        pass
    return []


def llc_bytes() -> int:
    try:
        best = 0
        base = "/sys/devices/system/cpu/cpu0/cache"
        for idx in os.listdir(base):
            with open(os.path.join(base, idx, "size")) as f:
                s = f.read().strip()
            m = re.match(r"(\d+)([KMG]?)", s)
            if m:
                best = max(best, int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20,
                                                    "G": 1 << 30}[m.group(2)])
        return best or (32 << 20)
    except OSError:
        return 32 << 20


def threads_info() -> dict:
    """Thread counts as torch, its OpenMP and MKL see them (they must agree: a mismatch silently
    skews CPU comparisons, pytorch issue 60000). dlkern's kernels use at::get_num_threads()."""
    info = {"torch_intraop": torch.get_num_threads()}
    text = torch.__config__.parallel_info()
    for key, pat in (("omp", r"omp_get_max_threads\(\) : (\d+)"),
                     ("mkl", r"mkl_get_max_threads\(\) : (\d+)")):
        m = re.search(pat, text)
        if m:
            info[key] = int(m.group(1))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        info[var] = os.environ.get(var)
    info["consistent"] = all(info.get(k, info["torch_intraop"]) == info["torch_intraop"]
                             for k in ("omp", "mkl"))
    return info


def cpu_peaks(threads: int, seconds: float = 0.3) -> dict:
    ops = torch.ops.dlkern
    avx2 = ops._cpu_fma_peak(256, threads, seconds)
    avx512 = ops._cpu_fma_peak(512, threads, seconds)
    bw = ops._cpu_stream_bandwidth(min(8 * llc_bytes(), 512 << 20), threads, seconds)
    out = {"fma_gflops_avx2": avx2 or None, "fma_gflops_avx512": avx512 or None,
           "copy_gbps": bw}
    out["peak_gflops"] = max(avx2, avx512) or None
    out["peak_gbps"] = bw
    return out


def cpu_info(threads: int, measure: bool = True, seconds: float = 0.3) -> dict:
    info = {"device": "cpu", "name": cpu_model(), "threads": threads,
            "logical_cpus": os.cpu_count(), "isa_flags": cpu_flags()}
    if measure:
        info["peaks"] = cpu_peaks(threads, seconds)
    return info


def _nvidia_smi_clocks() -> dict:
    """The current GPU's clocks (found by its PCI bus id: nvidia-smi ignores
    CUDA_VISIBLE_DEVICES)."""
    try:
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        bus = f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.mem,clocks.max.sm",
                              "--format=csv,noheader,nounits", "-i", bus],
                             capture_output=True, text=True, timeout=10)
        sm, mem, smax = [int(x) for x in out.stdout.strip().splitlines()[0].split(",")]
        return {"sm_mhz": sm, "mem_mhz": mem, "sm_max_mhz": smax}
    except Exception:  # not readable here: recorded as absent
        return {}


def gpu_peaks(seconds: float = 0.5) -> dict:
    import time
    dev = torch.device("cuda")
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def best_of(fn, work):
        fn()
        torch.cuda.synchronize()
        best, t_end = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = max(best, work / (start.elapsed_time(end) * 1e-3))
        return best

    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        n = 8192
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        gflops = best_of(lambda: torch.mm(a, b), 2 * n ** 3) * 1e-9
        del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    src = torch.empty(1 << 28, device=dev)          # 1 GiB
    dst = torch.empty_like(src)
    gbps = best_of(lambda: dst.copy_(src), 2 * src.numel() * 4) * 1e-9
    del src, dst
    torch.cuda.empty_cache()
    return {"matmul_fp32_gflops": gflops, "copy_gbps": gbps, "peak_gflops": gflops,
            "peak_gbps": gbps}


def gpu_info(measure: bool = True, seconds: float = 0.5) -> dict:
    """The current GPU (a torchrun rank's own: bench/dist.py selects it)."""
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    info = {"device": "cuda", "name": p.name,
            "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2 ** 30, 1),
            "l2_bytes": getattr(p, "L2_cache_size", None), "cuda": torch.version.cuda,
            "clocks": _nvidia_smi_clocks()}
    if measure:
        info["peaks"] = gpu_peaks(seconds)
    return info


def l2_flusher() -> callable:
    """A callable that overwrites a buffer twice the GPU's L2, evicting the workload's data."""
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    size = max(int(getattr(p, "L2_cache_size", 0) or (50 << 20)) * 2, 1 << 20)
    buf = torch.empty(size // 4, dtype=torch.float32, device="cuda")
    return lambda: buf.fill_(1.0)


def steady_malloc() -> dict:
    """Keeps freed memory in the process (glibc): no trimming of the heap top, and blocks up to
    32 MiB served from the heap instead of fresh mmaps. Without this, whether a call's multi-MB
    output (a weight gradient) lands on pages the process already has or on fresh pages that
    fault in at ~0.25 us per 4 KiB depends on what was freed before, so the same call can take
    2-3x longer on either side of a comparison by chance (seen on dense backward at batch 1).
    Applies to torch and dlkern alike; returns what was set, for the report."""
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    if not name:
        return {"malloc": "default (no libc found)"}
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return {"malloc": "default (not glibc)"}
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1
    return {"malloc": "steady (glibc: trim threshold 1 GiB, mmap threshold 32 MiB)" if ok
            else "default (mallopt refused)"}

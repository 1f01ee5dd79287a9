"""One sweep across processes and machines: `torchrun --nproc-per-node N -m bench.layers ...`
(multi-node torchrun the same way).

Without torchrun (no WORLD_SIZE, or 1) nothing here changes a run. Under it:
- every rank builds the same rows and takes a disjoint share of them, balanced by the per-row
  duration estimate (runner.row_estimate_s): longest first onto the least-loaded rank;
- each rank runs its share on its own device. CUDA rows run on cuda:LOCAL_RANK. On the CPU the
  ranks of one host split the physical cores this process may use (os.sched_getaffinity,
  hyperthreads kept with their core) into contiguous blocks: each rank is pinned to its block
  and runs one thread per physical core it owns (--threads may ask for fewer), so no core is
  oversubscribed;
- rank 0 gathers every rank's results (torch.distributed over gloo: only pickled records travel,
  no tensors, so gloo serves CPU and GPU runs alike) and writes one report, JSON and CSV, each row
  saying the host, rank and device that measured it. A rank whose run raised shows in rank 0's
  report and exit code, with the rows it had measured; so does one that built other rows than
  rank 0 (another --shapes file or dlkern build on its host), its results left out. The other
  ranks exit 0 once their results are handed over (a non-zero exit makes torchrun stop the
  rest, rank 0 included, before it has written the report). Without --keep-going each rank
  stops at its own first FAILED row; the others run their shares to the end.
- A rank that dies ends the run: torchrun stops the others and exits non-zero with the rank's
  error. One that hangs does so when the gather's timeout (twice the estimate of the longest
  share, plus ten minutes) runs out.

Ranks on one host share its memory bandwidth and last-level cache: their timings perturb each
other, more for memory-bound rows (batchnorm, softmax) than for GEMM-bound ones.
"""
from __future__ import annotations

import datetime
import os
import socket
import traceback
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from .cli import UsageError


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int
    local_world: int
    host: str


def from_env() -> Rank | None:
    """This process's place in a torchrun job, or None when it runs alone."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world <= 1:
        return None
    env = os.environ
    return Rank(int(env["RANK"]), world, int(env.get("LOCAL_RANK", env["RANK"])),
                int(env.get("LOCAL_WORLD_SIZE", world)), socket.gethostname())


def alone() -> Rank:
    """A run without torchrun, described as a job of one rank."""
    return Rank(0, 1, 0, 1, socket.gethostname())


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int]) -> list[list[int]]:
    """`cpus` grouped by the physical core they belong to (a core's hyperthreads together; from
    Linux's sysfs topology, each CPU its own core where that cannot be read)."""
    groups: OrderedDict = OrderedDict()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            key = tuple(open(base + f).read().strip() for f in ("physical_package_id", "core_id"))
        except OSError:
            key = ("cpu", str(c))
        groups.setdefault(key, []).append(c)
    return list(groups.values())


def own_cores(rank: Rank, cores: list, prog: str) -> list:
    """The contiguous block of `cores` (physical cores) that `rank` owns among the ranks of its
    host."""
    n, k, i = len(cores), rank.local_world, rank.local_rank
    if k > n:
        raise UsageError(f"{prog}: torchrun: {k} ranks on {rank.host} share {n} CPU core(s); "
                         f"run at most {n} per host (--nproc-per-node {n})")
    return cores[i * n // k:(i + 1) * n // k]


def pin_cpu(threads: int | None, prog: str) -> int | None:
    """Under torchrun: pins this process to the cores its rank owns and returns the thread count
    to run (--threads, at most the physical cores owned; by default one per core). Else
    `threads`."""
    rank = from_env()
    if rank is None:
        return threads
    cores = own_cores(rank, physical_cores(usable_cpus()), prog)
    if threads is not None and threads > len(cores):
        raise UsageError(f"{prog}: --threads {threads}: under torchrun each rank on "
                         f"{rank.host} owns {len(cores)} core(s) ({rank.local_world} ranks share "
                         "the host's cores)")
    os.sched_setaffinity(0, [c for core in cores for c in core])
    return threads or len(cores)


def describe(rank: Rank, devices: list[str], prog: str) -> dict:
    """This rank's entry in the report's meta["ranks"]: host, cores and threads, and its GPU
    (selected here: cuda:LOCAL_RANK)."""
    info = {"rank": rank.rank, "host": rank.host, "local_rank": rank.local_rank,
            "cores": usable_cpus(), "threads": torch.get_num_threads(), "cpu": "cpu"}
    if "cuda" in devices:
        if rank.world > 1:
            n = torch.cuda.device_count()
            if rank.local_rank >= n:
                raise UsageError(f"{prog}: torchrun: local rank {rank.local_rank} on {rank.host} "
                                 f"has no GPU of its own ({n} visible); run at most {n} per host "
                                 "or give --device cpu")
            torch.cuda.set_device(rank.local_rank)
        info["cuda"] = f"cuda:{torch.cuda.current_device()}"
    return info


def shard(costs: list[float], world: int) -> list[list[int]]:
    """Indices of `costs` split into `world` disjoint shares of near-equal sums (longest first
    onto the least-loaded share), each share in the original order."""
    loads, shares = [0.0] * world, [[] for _ in range(world)]
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += costs[i]
    return [sorted(s) for s in shares]


def start(rank: Rank, timeout_s: float) -> None:
    import torch.distributed as td
    td.init_process_group("gloo", rank=rank.rank, world_size=rank.world,
                          timeout=datetime.timedelta(seconds=timeout_s))


def gather(rank: Rank, payload) -> list | None:
    """Every rank's payload, in rank order, at rank 0 (None at the others); ends the group."""
    import torch.distributed as td
    out = [None] * rank.world if rank.rank == 0 else None
    try:
        td.gather_object(payload, out, dst=0)
    finally:
        td.destroy_process_group()
    return out


def run_share(items: list, mine: list[int], devices: list[str], run) -> dict:
    """run(the items of this rank's share, indices `mine` into `items`; a list it appends results
    to) -> stopped early, as a payload for gather: the results with their rows replaced by
    indices into `items` (rows hold the registry's functions, which need not pickle), the keys of
    every item and the devices (rank 0 refuses a rank that built others), and the traceback of
    what the run raised."""
    index = {id(items[i]): i for i in mine}
    out: list = []
    stopped, error = False, None
    try:
        stopped = run([items[i] for i in mine], out)
    except Exception:
        error = traceback.format_exc()
    return {"results": [replace(r, row=index[id(r.row)]) for r in out], "stopped": stopped,
            "error": error, "keys": [x.key for x in items], "devices": list(devices)}


def merge(payloads: list[dict], items: list, devices: list[str], ranks: list[dict]
          ) -> tuple[list, bool, list[str]]:
    """(results in device then row order, with their rows back and the rank that measured
    each, whether a rank stopped early, what each rank that raised or built other rows than
    rank 0 said)."""
    merged, errors = [], []
    keys = [x.key for x in items]
    for info, p in zip(ranks, payloads):
        who = f"rank {info['rank']} ({info['host']})"
        if p["keys"] != keys or p["devices"] != list(devices):
            errors.append(f"{who} built other rows or devices than rank 0 (another --shapes "
                          "file, dlkern build or GPU count on its host?): its results are left "
                          f"out\n{len(p['keys'])} rows on {', '.join(p['devices'])} against "
                          f"{len(keys)} on {', '.join(devices)}")
            continue
        merged += [replace(r, row=items[r.row], rank=info["rank"]) for r in p["results"]]
        if p["error"]:
            errors.append(f"{who} raised (the rows it measured are kept):\n{p['error']}")
    order = {id(x): i for i, x in enumerate(items)}
    # stable: each row's own order of implementations and passes is kept
    merged.sort(key=lambda r: (devices.index(r.device), order[id(r.row)]))
    return merged, any(p["stopped"] for p in payloads), errors

"""What the command lines (bench.layers, bench.models) share: argument helpers, the devices and
threads they run on, and writing and summing up their reports."""
from __future__ import annotations

import os
import sys

import torch

from . import machine


class UsageError(Exception):
    pass


def split_csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def closed_pipe_is_quiet(main):
    """Wraps a command line's main: when its reader goes away (`... --list | head`), it stops
    without a traceback, as other Unix tools do (exit 141, 128 + SIGPIPE)."""
    import functools

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
            return 141
    return wrapped


def add_report_options(ap, item: str) -> None:
    """The options both command lines take for their reports and their run: --out, --format,
    --keep-going (past a FAILED `item`), --no-peaks and --malloc."""
    ap.add_argument("--out", default=None, help="directory for report files")
    ap.add_argument("--format", default="md,csv,json",
                    help="files written to --out: md, csv, json (default: all)")
    ap.add_argument("--keep-going", action="store_true",
                    help=f"carry on past a FAILED {item} (the exit code is still 1)")
    ap.add_argument("--no-peaks", action="store_true", help="skip measuring the machine's peaks")
    ap.add_argument("--malloc", choices=("steady", "default"), default="steady",
                    help="steady (default): glibc keeps freed memory, so large outputs do not "
                         "page-fault by chance on one side; default: leave malloc as it is")


def start(argv, parse_args, list_text, build, prog: str):
    """The command lines' common start: (argv, args, what build(args) returns), or the exit code
    when there is nothing to run (0 after --list, 2 with the one-line usage error printed)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.list:
        print(list_text())
        return 0
    try:
        apply_threads(args.threads, prog)
        return argv, args, build(args)
    except UsageError as e:
        print(str(e), file=sys.stderr)
        return 2


def parse_devices(arg: str | None, prog: str = "bench.layers") -> list[str]:
    """The --device list: cpu, cuda or both; UsageError for a GPU that is not there."""
    gpu = torch.cuda.is_available()
    if arg is None:
        return ["cpu"] + (["cuda"] if gpu else [])
    devs = split_csv(arg)
    for d in devs:
        if d not in ("cpu", "cuda"):
            raise UsageError(f"{prog}: --device: expected cpu and/or cuda, got {d!r}")
    if "cuda" in devs and not gpu:
        raise UsageError(f"{prog}: --device cuda: no CUDA GPU is visible "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
    return devs


def _write(d: str, name: str, text: str) -> str:
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def devices_info(devices: list[str], threads: dict, measure: bool, seconds: float) -> dict:
    """{device: its description and (with `measure`) measured peaks}. With CUDA rows, TF32 is
    turned off for torch: dlkern's CUDA kernels are true float32, so cuBLAS/cuDNN are compared
    in float32 too (cuDNN's default is TF32 on Ampere and later, a different, less precise
    arithmetic)."""
    if "cuda" in devices:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return {d: machine.cpu_info(threads["torch_intraop"], measure, seconds) if d == "cpu"
            else machine.gpu_info(measure, seconds) for d in devices}


def apply_threads(threads: int | None, prog: str) -> None:
    """--threads: torch's intra-op count, which OpenMP, MKL and dlkern's kernels follow. Under
    torchrun, the process is first pinned to the cores its rank owns, and the count defaults to
    them (bench/dist.py)."""
    from . import dist
    if threads is not None and threads < 1:
        raise UsageError(f"{prog}: --threads must be >= 1, got {threads}")
    threads = dist.pin_cpu(threads, prog)
    if threads is not None:
        torch.set_num_threads(threads)


def write_reports(out: str, fmts: list[str], files: dict, prog: str, plots=None) -> None:
    """Writes {fmt: (file name, text or a callable making it)} for the formats asked for, and the
    plot files `plots()` writes; prints what was written."""
    os.makedirs(out, exist_ok=True)
    written = []
    for fmt, (name, text) in files.items():
        if fmt in fmts:
            written.append(_write(out, name, text() if callable(text) else text))
    if plots is not None:
        written += plots()
    print(f"{prog}: wrote " + ", ".join(written), file=sys.stderr)


def report_failed(prog: str, failed: list[str], what: str, stopped: bool) -> int:
    """Lists the FAILED (what, implementation) pairs on stderr; the exit code (1, or 0)."""
    if not failed:
        return 0
    print(f"{prog}: {len(failed)} ({what}, implementation) pair(s) FAILED the correctness check "
          "and were not timed:", file=sys.stderr)
    for line in failed:
        print(f"  {line}", file=sys.stderr)
    if stopped:
        print(f"{prog}: stopped at the first FAILED {what} (--keep-going carries on)",
              file=sys.stderr)
    return 1

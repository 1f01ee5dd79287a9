"""What this dlkern build and machine can do, and which CPU kernel path is in use."""
import contextlib
import os

import torch

from ._loader import build_info

ENV_ISA = "DLKERN_CPU_ISA"


def capabilities() -> dict:
    """A dict describing the kernels in use:

    cpu_isa         CPU path the kernels dispatch to now ('avx512', 'avx2' or 'reference')
    cpu_isa_best    best path this CPU supports
    openmp          whether the kernels were built with OpenMP
    openmp_threads  threads the CPU kernels use (torch.get_num_threads(), shared with torch)
    cuda_built      whether CUDA kernels were compiled in
    gpu_visible     whether torch sees a GPU
    torch           installed torch version (== the one dlkern._C was built against)
    """
    info = build_info()
    return {
        "cpu_isa": torch.ops.dlkern._cpu_isa(),
        "cpu_isa_best": torch.ops.dlkern._cpu_isa_best(),
        "openmp": info["openmp"] != "0",
        "openmp_threads": torch.get_num_threads(),
        "cuda_built": info["cuda"] == "1",
        "gpu_visible": torch.cuda.is_available(),
        "torch": torch.__version__,
    }


def set_cpu_isa(name: str) -> None:
    """Selects the CPU kernel path: 'auto' (best supported), 'avx512', 'avx2' or
    'reference'.

    Raises ValueError for an unknown name or a path this CPU cannot run."""
    torch.ops.dlkern._set_cpu_isa(str(name))


@contextlib.contextmanager
def cpu_isa(name: str):
    """Runs a block on one CPU kernel path, restoring the previous one after."""
    previous = torch.ops.dlkern._cpu_isa()
    set_cpu_isa(name)
    try:
        yield
    finally:
        set_cpu_isa(previous)


def apply_env():
    value = os.environ.get(ENV_ISA)
    if value:
        try:
            set_cpu_isa(value)
        except ValueError as e:
            raise ImportError(f"dlkern: environment variable {ENV_ISA}={value!r} is invalid: {e}") \
                from None

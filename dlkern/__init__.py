"""dlkern: hand-written CPU (AVX2/FMA + OpenMP) and CUDA kernels for dense, conv2d, batchnorm2d
and softmax, exposed to PyTorch as custom ops (torch.ops.dlkern.*).

    import dlkern
    y = dlkern.functional.softmax(x, dim=-1)
    dlkern.capabilities()
"""
from ._loader import load_extension as _load_extension

_load_extension()

from ._capabilities import capabilities, cpu_isa, set_cpu_isa  # noqa: E402
from . import ops  # noqa: E402,F401  (registers fake kernels and registry entries)
from . import functional, nn, registry  # noqa: E402,F401
from . import models  # noqa: E402,F401

__all__ = ["capabilities", "cpu_isa", "set_cpu_isa", "functional", "models", "nn", "registry"]
__version__ = "0.1.0"

_capabilities.apply_env()

"""The op registry: one entry per op, read by tests/ and bench/ alike.

An entry says how to call dlkern's op and torch's reference, how to make inputs for a case
(edge cases for tests, workload cases for benchmarks), which inputs get gradients, how close
the results must be, and how many FLOPs and bytes one call moves (for roofline figures).
Adding an op = one `register(OpSpec(...))` in its module under dlkern/ops/.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Mapping

import torch


@dataclass(frozen=True)
class Case:
    """One problem instance: a display name and the parameters the op's generator reads.

    `suites` names the benchmark suites the case belongs to (bench.layers --suite). Sweeps (the
    dense sweep) set `group`, the label shared by the cases of one curve ("Dense 784 => 1024 with
    bias"), and `sweep`, the swept parameter's label and value (("Batch Size", 64))."""
    name: str
    params: Mapping[str, Any]
    suites: tuple[str, ...] = ()
    group: str = ""
    sweep: tuple[str, Any] | None = None


@dataclass(frozen=True)
class Tolerance:
    """flash-attention's rule: the kernel's max error against a float64 reference may be at most
    `k` times torch's own float32 max error on the same inputs, plus `floor` times the largest
    reference magnitude (torch can be exact on easy inputs, which would make k * 0 = 0)."""
    k: float = 3.0
    floor: float = 1e-6

    def at(self, dtype: torch.dtype) -> "Tolerance":
        """This (float32) rule for results in `dtype`. k stays: the bound is still k times
        torch's own error at that dtype. The floor is in units of the dtype's rounding: float64
        scales it by eps64/eps32 (and the check scales torch's float32 error likewise, float64
        having no more precise reference to measure torch's float64 error against); float16
        and bfloat16 take one unit in the last place of the largest reference magnitude (their
        results are rounded to that, whatever the arithmetic inside)."""
        if dtype == torch.float32:
            return self
        eps = torch.finfo(dtype).eps
        if dtype == torch.float64:
            return Tolerance(self.k, self.floor * eps / torch.finfo(torch.float32).eps)
        return Tolerance(self.k, max(self.floor, eps))


@dataclass(frozen=True)
class Inputs:
    """What a generator returns: keyword arguments for fn/ref (tensors and plain values), and
    the names of the tensor arguments that get gradients."""
    kwargs: dict
    grad: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable[..., torch.Tensor]            # dlkern functional
    ref: Callable[..., torch.Tensor]           # torch reference, same keyword arguments
    make_inputs: Callable[[Mapping[str, Any], str, int], Inputs]  # (params, device, seed)
    edge_cases: tuple[Case, ...]
    bench_cases: tuple[Case, ...]
    # FLOPs and minimal bytes (read + written) of one call: {"forward": n, "backward": n}
    flops: Callable[[Mapping[str, Any]], dict]
    bytes: Callable[[Mapping[str, Any]], dict]
    tol_forward: Tolerance = Tolerance()
    tol_backward: Tolerance = Tolerance()
    # Per dtype name ("float16", ...), (forward, backward) tolerances replacing the float32 ones
    # scaled by Tolerance.at (batch_norm's float64 says why it needs one).
    tol_dtypes: Mapping[str, tuple[Tolerance, Tolerance]] = field(default_factory=dict)
    # The dtypes dlkern's kernels for this op compute in (bench.layers skips the others for
    # `custom`; the functional raises TypeError for them).
    dtypes: tuple[str, ...] = ("float32",)
    devices: tuple[str, ...] = ("cpu",)           # devices with dlkern kernels
    # Kernel variants selectable by `--impl custom:<name>`: a name -> context manager factory.
    variants: Mapping[str, Callable[[], ContextManager]] = field(default_factory=dict)
    # The parameters make_inputs reads, name -> one-line description; `required` of them must be
    # given. Shape files for bench.layers are validated against these. By convention "shape" is
    # the shape of the op's main input.
    params_doc: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ("shape",)
    # Report title ("nn.Softmax"), and the keyword changes that put the op in eval mode for the
    # Inference pass (batchnorm: training=False); None when forward is the same in both modes.
    title: str = ""
    eval_kwargs: Callable[[dict], dict] | None = None
    # Arguments the op updates in place by contract (batchnorm's running statistics): checked
    # against torch's updated copies instead of being required unchanged.
    mutates: tuple[str, ...] = ()

    def tolerances(self, dtype: torch.dtype = torch.float32) -> tuple[Tolerance, Tolerance]:
        """(forward, backward) tolerance of results in `dtype`."""
        name = str(dtype).removeprefix("torch.")
        if name in self.tol_dtypes:
            return self.tol_dtypes[name]
        return self.tol_forward.at(dtype), self.tol_backward.at(dtype)

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raises ValueError naming the op and the parameter when `params` does not fit."""
        missing = [k for k in self.required if k not in params]
        unknown = [k for k in params if self.params_doc and k not in self.params_doc]
        if missing or unknown:
            what = (f"missing {', '.join(missing)}" if missing else "") + \
                   ("; " if missing and unknown else "") + \
                   (f"unknown {', '.join(unknown)}" if unknown else "")
            known = "; ".join(f"{k}: {v}" for k, v in self.params_doc.items())
            raise ValueError(f"dlkern.{self.name}: parameters {what} (expected {known})")


_REGISTRY: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"dlkern.registry: op {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> OpSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"dlkern.registry: no op named {name!r}; registered: "
                       f"{', '.join(sorted(_REGISTRY))}") from None


def ops() -> list[OpSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def kernel_devices() -> tuple[str, ...]:
    """Devices dlkern's kernels run on in this build: CPU always, CUDA when the extension was
    compiled with its CUDA kernels (a CUDA torch and nvcc at build time)."""
    from ._loader import build_info
    return ("cpu", "cuda") if build_info()["cuda"] == "1" else ("cpu",)


# dlkern's CPU paths, each needing every feature of the one before (csrc/core/common.h CpuIsa)
CPU_ISAS = ("reference", "avx2", "avx512")


def cpu_variants() -> dict[str, Callable[[], ContextManager]]:
    """The CPU ISA paths this CPU can run, as kernel variants (shared by every CPU op)."""
    from ._capabilities import cpu_isa
    best = torch.ops.dlkern._cpu_isa_best()
    names = CPU_ISAS[:CPU_ISAS.index(best) + 1]
    return {name: functools.partial(cpu_isa, name) for name in names}


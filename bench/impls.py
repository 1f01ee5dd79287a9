"""Implementations a run can time: `--impl torch,custom,custom:<variant>,torch-compile`, and
`torch-again` (torch under another name: the A/A check).

An implementation turns an op's registry entry into a callable with the torch reference's keyword
arguments, for one device. `torch` is the baseline every ratio is taken against and is not gated
(it defines the float32 error the others are allowed); every other implementation is checked
before it is timed. More can be registered with `register` (tests use this to prove the gate
refuses wrong kernels). `cupy` is the second GPU peer (bench/cupy_impl.py).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import torch

import dlkern
from dlkern.registry import CPU_ISAS, OpSpec

TORCH = "torch"
TORCH_AGAIN = "torch-again"


class Unavailable(Exception):
    """This implementation cannot run this op on this device; the message says why."""


@dataclass
class Impl:
    name: str                                   # as given to --impl
    label: str                                  # as shown in report tables
    fn: Callable[..., torch.Tensor]             # same keyword arguments as spec.ref
    context: Callable[[], ContextManager] = contextlib.nullcontext
    is_baseline: bool = False                   # torch itself: not gated
    notes: dict = field(default_factory=dict)
    # the dtypes it computes in (rows at other dtypes are skipped with the reason); None: any
    # dtype torch runs the op in
    dtypes: tuple[str, ...] | None = None

    def refuses(self, dtype: str, op: str) -> str | None:
        """Why a row of `op` at `dtype` is skipped for this implementation, or None."""
        return dtype_refusal(self.label, self.dtypes, dtype, op)


def dtype_refusal(label: str, dtypes: tuple[str, ...] | None, dtype: str, op: str = ""
                  ) -> str | None:
    """Why an implementation computing in `dtypes` (None: any) skips a row at `dtype`, or None."""
    if dtypes is None or dtype in dtypes:
        return None
    return f"{label} computes {op + ' ' if op else ''}in {', '.join(dtypes)} only, not {dtype}"


def torch_cannot_text(what: str, dtype: str, device: str, e: Exception) -> str:
    """The skip reason of a row (or model) torch itself raised on at `dtype`."""
    first = str(e).splitlines()[0] if str(e) else ""
    return f"torch cannot run {what} in {dtype} on {device}: {type(e).__name__}: {first}"


# name (or "prefix:" for parameterised names) -> factory(spec, device, argument) -> Impl
_FACTORIES: dict[str, Callable[[OpSpec, str, str | None], Impl]] = {}


def register(name: str, factory: Callable[[OpSpec, str, str | None], Impl]) -> None:
    """Adds an implementation. `name` ending in ':' takes an argument (custom:<variant>)."""
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    _FACTORIES.pop(name, None)


def is_builtin(name: str) -> bool:
    """Whether `name` is a registered implementation or a registered prefix's (custom:<variant>)."""
    base, sep, arg = name.partition(":")
    return name in _FACTORIES or bool(sep and arg and base + ":" in _FACTORIES)


def names() -> list[str]:
    return [n + "<variant>" if n.endswith(":") else n for n in _FACTORIES]


def validate(impl_names: list[str]) -> None:
    """Raises ValueError for a name no factory knows (before anything runs)."""
    for n in impl_names:
        if not is_builtin(n):
            raise ValueError(f"bench.layers: --impl: unknown implementation {n!r}; known: "
                             f"{', '.join(names())}, or pkg.module:name, path/to/file.py:name, "
                             "an installed plugin (bench/plugins.py)")
    if len(set(impl_names)) != len(impl_names):
        raise ValueError(f"bench.layers: --impl: an implementation is listed twice: "
                         f"{','.join(impl_names)}")


def resolve(name: str, spec: OpSpec, device: str) -> Impl:
    """The Impl for `name`; raises Unavailable with a reason when it cannot run here."""
    if name in _FACTORIES:
        return _FACTORIES[name](spec, device, None)
    base, _, arg = name.partition(":")
    return _FACTORIES[base + ":"](spec, device, arg)


# ---- the built-in implementations ---------------------------------------------------------

def _torch(spec: OpSpec, device: str, arg) -> Impl:
    return Impl(TORCH, f"PyTorch {torch.__version__.split('+')[0]}", spec.ref, is_baseline=True)


def _torch_again(spec: OpSpec, device: str, arg) -> Impl:
    """torch itself under another name, gated and timed like any other implementation: the A/A
    check of the harness (its ratios to torch must come out 1 within their intervals)."""
    return Impl(TORCH_AGAIN, f"PyTorch {torch.__version__.split('+')[0]} (again)", spec.ref)


def _custom_label(device: str, variant: str | None) -> str:
    if device == "cpu":
        return f"dlkern {variant or dlkern.capabilities()['cpu_isa']}"
    return "dlkern"


def _custom(spec: OpSpec, device: str, arg) -> Impl:
    dev = torch.device(device).type
    if dev not in spec.devices:
        raise Unavailable(f"dlkern has no {dev.upper()} kernel for {spec.name} "
                          f"(has: {', '.join(spec.devices)})")
    return Impl("custom", _custom_label(dev, None), spec.fn, dtypes=spec.dtypes)


# What each CPU path needs of the CPU, for the message that refuses it.
ISA_NEEDS = {"reference": "nothing", "avx2": "AVX2 and FMA",
             "avx512": "AVX-512 F, BW, DQ and VL, enabled by the OS"}


def cpu_isa_best() -> str:
    """The best CPU path of this machine (a function, so that tests can pretend otherwise)."""
    return torch.ops.dlkern._cpu_isa_best()


def _custom_variant(spec: OpSpec, device: str, variant) -> Impl:
    dev = torch.device(device).type
    if dev not in spec.devices:
        raise Unavailable(f"dlkern has no {dev.upper()} kernel for {spec.name}")
    best = cpu_isa_best()
    if variant in CPU_ISAS and CPU_ISAS.index(variant) > CPU_ISAS.index(best):
        raise Unavailable(f"this CPU cannot run dlkern's {variant} path (its best is {best}; "
                          f"{variant} needs {ISA_NEEDS[variant]})")
    if variant not in spec.variants:
        raise Unavailable(f"{spec.name} has no kernel variant {variant!r} here "
                          f"(has: {', '.join(spec.variants) or 'none'})")
    if dev != "cpu":
        raise Unavailable(f"variant {variant!r} is a CPU path")
    return Impl(f"custom:{variant}", _custom_label(dev, variant), spec.fn,
                context=spec.variants[variant], dtypes=spec.dtypes)


_compiled: dict[tuple[str, str], Callable] = {}


def _torch_compile(spec: OpSpec, device: str, arg) -> Impl:
    key = (spec.name, torch.device(device).type)
    if key not in _compiled:
        # every case of an op is a new static shape of the same function: allow the recompiles
        # (the default limit of 8 would silently fall back to eager on the 9th shape)
        try:
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        except AttributeError:
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        # the Backward pass re-runs backward over a retained graph; AOTAutograd's donated
        # buffers forbid that (it frees saved tensors inside the compiled backward)
        try:
            import torch._functorch.config as functorch_config
            functorch_config.donated_buffer = False
        except (ImportError, AttributeError):
            pass
        ref = spec.ref

        def layer(**kw):
            return ref(**kw)
        _compiled[key] = torch.compile(layer, dynamic=False)
    return Impl("torch-compile", "torch.compile", _compiled[key])


def _cupy(spec: OpSpec, device: str, arg) -> Impl:
    from . import cupy_impl
    if torch.device(device).type != "cuda":
        raise Unavailable("CuPy is a GPU implementation: it runs with --device cuda only")
    reason = cupy_impl.available()
    if reason:
        raise Unavailable(reason)
    fn = cupy_impl.FUNCTIONS.get(spec.name)
    if fn is None:
        raise Unavailable(f"CuPy has no {spec.name} implementation (it has: "
                          f"{', '.join(sorted(cupy_impl.FUNCTIONS))})")
    # CuPy arrays are NumPy's dtypes: no bfloat16
    return Impl("cupy", cupy_impl.label(), fn, dtypes=("float32", "float16", "float64"))


register(TORCH, _torch)
register(TORCH_AGAIN, _torch_again)
register("custom", _custom)
register("custom:", _custom_variant)
register("torch-compile", _torch_compile)
register("cupy", _cupy)

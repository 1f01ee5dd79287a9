"""softmax: dlkern.functional.softmax mirrors torch.nn.functional.softmax.

Kernels: csrc/core/{ref,cpu,cuda}/softmax*; bindings and autograd: csrc/bindings/softmax.cpp.
"""
from __future__ import annotations

import math
import warnings

import torch

from .. import registry
from ..registry import Case, Inputs, OpSpec, Tolerance
from ._inputs import spaced

_softmax = torch.ops.dlkern.softmax.default
# The OpOverload's C++ callable: calling it directly skips a Python frame (~0.25 us of a ~4 us
# small softmax). Under torch.compile the OpOverload itself is called so Dynamo records the op.
_softmax_eager = _softmax._op
_is_compiling = torch.compiler.is_compiling


def _implicit_dim(ndim: int, stacklevel: int) -> int:
    warnings.warn("Implicit dimension choice for softmax has been deprecated. "
                  "Change the call to include dim=X as an argument.", stacklevel=stacklevel)
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """softmax(input, dim) = exp(input) / sum(exp(input), dim), like torch.nn.functional.softmax.

    float32 only (a `dtype` of torch.float32 casts the input first, as torch does)."""
    if dim is None:
        dim = _implicit_dim(input.dim(), _stacklevel)
    if dtype is not None:
        if dtype != torch.float32:
            raise TypeError(f"dlkern.softmax: argument 'dtype' must be None or torch.float32, "
                            f"got {dtype}")
        input = input.to(dtype)
    if _is_compiling():
        return _softmax(input, dim)
    return _softmax_eager(input, dim)


# ---- fake kernels: shapes for torch.compile / meta tensors --------------------------------

def _fake_check(op: str, t: torch.Tensor, arg: str):
    torch._check(t.dtype == torch.float32,
                 lambda: f"dlkern.{op}: argument '{arg}' must be a float32 tensor, got {t.dtype}")


def _fake_dim(op: str, dim: int, ndim: int):
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"dlkern.{op}: argument 'dim' out of range: expected a value in "
                         f"[{-n}, {n - 1}] for a {ndim}-d input, got {dim}")


@torch.library.register_fake("dlkern::softmax")
def _softmax_fake(input, dim):
    _fake_check("softmax", input, "input")
    _fake_dim("softmax", dim, input.dim())
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("dlkern::softmax_backward")
def _softmax_backward_fake(grad_output, output, dim):
    _fake_check("softmax_backward", grad_output, "grad_output")
    _fake_check("softmax_backward", output, "output")
    torch._check(grad_output.shape == output.shape, lambda: (
        "dlkern.softmax_backward: arguments 'grad_output' and 'output' must have the same shape, "
        f"got {tuple(grad_output.shape)} and {tuple(output.shape)}"))
    _fake_dim("softmax_backward", dim, output.dim())
    return torch.empty_like(output, memory_format=torch.contiguous_format)


# ---- registry entry ----------------------------------------------------------------------

def _make_inputs(p, device: str, seed: int) -> Inputs:
    """params: shape, dim, kind (normal | hard | nan | posinf | equal), layout
    (contiguous | transposed | strided)."""
    shape, kind, layout = tuple(p["shape"]), p.get("kind", "normal"), p.get("layout", "contiguous")
    g = torch.Generator().manual_seed(seed)
    make = list(shape)
    if layout == "transposed":
        make[-1], make[-2] = make[-2], make[-1]
    elif layout == "strided":
        make[-1] *= 2
    x = torch.randn(make, generator=g)
    if kind == "hard" and x.numel():
        u = torch.rand(make, generator=g)
        x = x * 3
        x = torch.where(u < 0.01, x * 30, x)                                 # outliers
        x = torch.where((u >= 0.01) & (u < 0.02), float("-inf"), x)          # masked entries
        if x.dim() >= 1 and x.shape[0] > 1:
            x[0] += 1e4                                                      # large magnitudes
    elif kind == "nan":
        x = spaced(x, 5, float("nan"))
    elif kind == "posinf":
        x = spaced(x, 3, float("inf"))
    elif kind == "equal":
        x = torch.full(make, 0.7)
    if layout == "transposed":
        x = x.transpose(-1, -2)
    elif layout == "strided":
        x = x[..., ::2]
    return Inputs({"input": x.to(device), "dim": p["dim"]}, grad=("input",))


def _edge_cases():
    cases = [
        Case("0-d dim=0", {"shape": (), "dim": 0}), Case("0-d dim=-1", {"shape": (), "dim": -1}),
        Case("empty 0", {"shape": (0,), "dim": 0}), Case("empty 0x5 dim=1", {"shape": (0, 5), "dim": 1}),
        Case("empty 0x5 dim=0", {"shape": (0, 5), "dim": 0}), Case("empty 3x0", {"shape": (3, 0), "dim": 1}),
        Case("1", {"shape": (1,), "dim": 0}), Case("1x1", {"shape": (1, 1), "dim": -1}),
        Case("3x1 dim=-1", {"shape": (3, 1), "dim": -1}), Case("1x13 dim=0", {"shape": (1, 13), "dim": 0}),
    ]
    # row lengths below, at and above the vector width (8), the unroll (32), and the in-cache limit
    for n in (2, 7, 8, 9, 31, 32, 33, 63, 64, 65, 127, 1000, 8192, 8193, 10007):
        cases.append(Case(f"5x{n} hard", {"shape": (5, n), "dim": -1, "kind": "hard"}))
    for shape, dim in [((2, 3, 5), 0), ((2, 3, 5), 1), ((2, 3, 5), 2), ((2, 3, 5), -2),
                       ((2, 3, 4, 5), 1), ((4, 37, 33), 1), ((3, 65, 40), 1), ((1024, 512), 0),
                       ((8, 16, 129), -1), ((2, 7, 3, 11), -3)]:
        cases.append(Case(f"{'x'.join(map(str, shape))} dim={dim} hard",
                          {"shape": shape, "dim": dim, "kind": "hard"}))
    for layout in ("transposed", "strided"):
        cases.append(Case(f"64x33 {layout}", {"shape": (64, 33), "dim": -1, "layout": layout}))
        cases.append(Case(f"64x33 {layout} dim=0", {"shape": (64, 33), "dim": 0, "layout": layout}))
    for kind in ("nan", "posinf", "equal"):
        cases.append(Case(f"9x37 {kind}", {"shape": (9, 37), "dim": -1, "kind": kind}))
        cases.append(Case(f"37x9 {kind} dim=0", {"shape": (37, 9), "dim": 0, "kind": kind}))
        cases.append(Case(f"3x9000 {kind}", {"shape": (3, 9000), "dim": -1, "kind": kind}))
    return tuple(cases)


_BENCH = tuple(
    [Case(f"{r}x{c} dim=-1", {"shape": (r, c), "dim": -1}, suites=("tensorgrad", "softmax"))
     for r, c in ((128, 64), (512, 256), (1024, 512))]
    + [Case("4096x4096 dim=-1", {"shape": (4096, 4096), "dim": -1}, suites=("softmax",)),
       Case("1024x512 dim=0", {"shape": (1024, 512), "dim": 0}, suites=("softmax",))])


def _numel(p):
    return math.prod(p["shape"])


registry.register(OpSpec(
    name="softmax",
    fn=softmax,
    ref=lambda input, dim: torch.nn.functional.softmax(input, dim),
    make_inputs=_make_inputs,
    edge_cases=_edge_cases(),
    bench_cases=_BENCH,
    # per element: max, subtract, exp (counted as 1), add, multiply / backward: mul, add, sub, mul
    flops=lambda p: {"forward": 5 * _numel(p), "backward": 4 * _numel(p)},
    # forward reads x and writes y; backward reads y and dy, writes dx
    bytes=lambda p: {"forward": 8 * _numel(p), "backward": 12 * _numel(p)},
    tol_forward=Tolerance(k=3.0, floor=1e-6),
    # dx = y * (g - sum(g * y)): where g_i ~ sum(g * y) the subtraction cancels and one ulp of a
    # forward y (times |g|) becomes a large error relative to |dx|. On tiny inputs torch's own
    # max error is sometimes lucky-small, so the floor is set at ~32 ulp of the largest |dx|
    # (measured over 2000x8 .. 20x10007 inputs, dlkern's errors match torch's on average).
    tol_backward=Tolerance(k=3.0, floor=4e-6),
    devices=registry.kernel_devices(),
    variants=registry.cpu_variants(),
    params_doc={"shape": "input shape, e.g. 128x64",
                "dim": "the softmax dimension (negative counts from the end)",
                "kind": "input values: normal | hard | nan | posinf | equal (default normal)",
                "layout": "contiguous | transposed | strided (default contiguous)"},
    required=("shape", "dim"),
    title="nn.Softmax",
))

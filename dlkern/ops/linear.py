"""linear: dlkern.functional.linear mirrors torch.nn.functional.linear (y = x W^T + b).

Kernels: csrc/core/{gemm.h, linear.h, ref/gemm_ref.cpp, cpu/gemm_avx2.cpp, cpu/gemm_avx512.cpp,
cpu/linear_cpu.cpp};
bindings and autograd: csrc/bindings/linear.cpp.
"""
from __future__ import annotations

import math

import torch

from .. import registry
from ..registry import Case, Inputs, OpSpec, Tolerance
from ._fake import check_tensors
from ._inputs import offset_with_outliers, spaced

_linear = torch.ops.dlkern.linear.default
_linear_eager = _linear._op
_is_compiling = torch.compiler.is_compiling


def linear(input: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """linear(input, weight, bias=None) = input @ weight.T + bias, like
    torch.nn.functional.linear: input (..., in_features), weight (out_features, in_features),
    bias (out_features). float32, on CPU or CUDA."""
    if _is_compiling():
        return _linear(input, weight, bias)
    return _linear_eager(input, weight, bias)


# ---- fake kernels --------------------------------------------------------------------------

def _fake_checks(op, input, weight, bias):
    check_tensors(op, input, weight=weight, bias=bias)
    torch._check(weight.dim() == 2, lambda: f"dlkern.{op}: argument 'weight' must be 2-D "
                 f"(out_features, in_features), got shape {tuple(weight.shape)}")
    torch._check(input.dim() >= 1, lambda: f"dlkern.{op}: argument 'input' must have at least 1 "
                 "dimension (..., in_features), got a 0-d tensor")
    torch._check(input.shape[-1] == weight.shape[1], lambda: (
        f"dlkern.{op}: input and weight shapes cannot be multiplied: input "
        f"{tuple(input.shape)} has {input.shape[-1]} in_features, weight {tuple(weight.shape)} "
        f"expects {weight.shape[1]}"))


@torch.library.register_fake("dlkern::linear")
def _linear_fake(input, weight, bias=None):
    _fake_checks("linear", input, weight, bias)
    return input.new_empty((*input.shape[:-1], weight.shape[0]))


@torch.library.register_fake("dlkern::linear_backward")
def _linear_backward_fake(grad_output, input, weight, output_mask):
    _fake_checks("linear_backward", input, weight, None)
    dx = input.new_empty(input.shape) if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] else None
    db = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return dx, dw, db


# ---- registry entry --------------------------------------------------------------------------

def _make_inputs(p, device: str, seed: int) -> Inputs:
    """params: shape (input shape, last dim = in_features), out (out_features), bias (bool,
    default True), layout (contiguous | weight_t: the weight a transposed view | input_t: the
    input a transposed view (2-D) | sliced: input and weight every other column), kind (normal |
    hard: large magnitudes and cancellation | nan | inf)."""
    shape, out = tuple(p["shape"]), int(p["out"])
    in_f = shape[-1]
    layout, kind = p.get("layout", "contiguous"), p.get("kind", "normal")
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(max(in_f, 1))
    if layout == "input_t" and len(shape) == 2:
        x = torch.randn(shape[::-1], generator=g).t()
    elif layout == "sliced":
        x = torch.randn(*shape[:-1], 2 * in_f, generator=g)[..., ::2]
    else:
        x = torch.randn(shape, generator=g)
    if layout == "weight_t":
        w = (torch.rand(in_f, out, generator=g) * 2 - 1).mul_(bound).t()
    elif layout == "sliced":
        w = (torch.rand(out, 2 * in_f, generator=g) * 2 - 1).mul_(bound)[:, ::2]
    else:
        w = (torch.rand(out, in_f, generator=g) * 2 - 1).mul_(bound)
    b = (torch.rand(out, generator=g) * 2 - 1).mul_(bound) if p.get("bias", True) else None
    if kind == "hard":
        x = offset_with_outliers(x, g)
    elif kind == "nan":
        x = spaced(x, 3, float("nan"))
    elif kind == "inf" and x.numel():
        x = x.clone()
        x.view(-1)[0] = float("inf")
    kw = {"input": x.to(device), "weight": w.to(device), "bias": None if b is None else b.to(device)}
    grad = ("input", "weight") + (("bias",) if b is not None else ())
    return Inputs(kw, grad=grad)


def _edge_cases():
    cases = [Case("1 -> 1", {"shape": (1, 1), "out": 1}),
             Case("1-d input", {"shape": (13,), "out": 7}),
             Case("empty batch", {"shape": (0, 9), "out": 5}),
             Case("empty batch no bias", {"shape": (0, 9), "out": 5, "bias": False}),
             Case("in=0", {"shape": (4, 0), "out": 3}),
             Case("batch dims", {"shape": (2, 3, 5, 17), "out": 33}),
             Case("batch dims empty", {"shape": (2, 0, 17), "out": 6})]
    # each dimension below, at and above the micro-tile (6 rows x 16 columns), the dot and direct
    # paths' limits (48 and 16 rows) and the K block (256)
    sizes = (1, 2, 3, 7, 15, 16, 17, 31, 33, 64, 100, 127)
    for i, (b, n_in, n_out) in enumerate([(b, n_in, n_out) for b in sizes for n_in, n_out in
                                          ((1, 1), (3, 17), (16, 16), (33, 7), (100, 31))]):
        cases.append(Case(f"{b}x{n_in} -> {n_out}", {"shape": (b, n_in), "out": n_out,
                                                    "bias": i % 2 == 0}))
    for b, n_in, n_out in ((1000, 7, 3), (2, 1000, 15), (3, 17, 1000), (49, 257, 18),
                           (145, 300, 40), (6, 2049, 17), (1, 1024, 512), (16, 784, 1024)):
        cases.append(Case(f"{b}x{n_in} -> {n_out}", {"shape": (b, n_in), "out": n_out}))
    for layout in ("weight_t", "input_t", "sliced"):
        for b in (1, 5, 64):
            cases.append(Case(f"{b}x37 -> 19 {layout}", {"shape": (b, 37), "out": 19,
                                                        "layout": layout}))
    cases.append(Case("hard 64x300 -> 50", {"shape": (64, 300), "out": 50, "kind": "hard"}))
    cases.append(Case("hard 3x300 -> 50", {"shape": (3, 300), "out": 50, "kind": "hard"}))
    cases.append(Case("nan 9x20 -> 11", {"shape": (9, 20), "out": 11, "kind": "nan"}))
    cases.append(Case("inf 9x20 -> 11", {"shape": (9, 20), "out": 11, "kind": "inf"}))
    return tuple(cases)


def _bench_cases():
    cases = [Case("Dense", {"shape": (1, 1024), "out": 512}, suites=("layers",))]
    for bias in (True, False):
        group = f"Dense 784 => 1024 {'with' if bias else 'without'} bias"
        for b in (1, 4, 16, 64, 256, 1024):
            cases.append(Case(f"784->1024 {'bias' if bias else 'no bias'} batch {b}",
                              {"shape": (b, 784), "out": 1024, "bias": bias},
                              suites=("linear-sweep",), group=group, sweep=("Batch Size", b)))
    for b, n_in, n_out in ((32, 64, 128), (64, 1024, 2048), (128, 2048, 4096)):
        cases.append(Case(f"input={b}x{n_in}, features={n_out}", {"shape": (b, n_in), "out": n_out},
                          suites=("tensorgrad",)))
    cases.append(Case("1024->512 batch 256", {"shape": (256, 1024), "out": 512}, suites=("linear",)))
    # a plain 2048^3 GEMM through the core: x @ w.t() with w a transposed view is x @ B for a
    # row-major B, which torch runs as torch.mm
    cases.append(Case("GEMM 2048x2048x2048", {"shape": (2048, 2048), "out": 2048, "bias": False,
                                              "layout": "weight_t"}, suites=("gemm",)))
    return tuple(cases)


def _dims(p):
    shape = tuple(p["shape"])
    return math.prod(shape[:-1]), shape[-1], int(p["out"]), bool(p.get("bias", True))


def _flops(p):
    b, i, o, bias = _dims(p)
    return {"forward": 2 * b * i * o + (b * o if bias else 0),
            "backward": 4 * b * i * o + (b * o if bias else 0)}


def _bytes(p):
    b, i, o, bias = _dims(p)
    fwd = 4 * (b * i + o * i + b * o + (o if bias else 0))
    # reads dy, x, w; writes dx, dw (and db)
    bwd = 4 * (b * o + b * i + o * i + b * i + o * i + (o if bias else 0))
    return {"forward": fwd, "backward": bwd}


registry.register(OpSpec(
    name="linear",
    fn=linear,
    ref=lambda input, weight, bias: torch.nn.functional.linear(input, weight, bias),
    make_inputs=_make_inputs,
    edge_cases=_edge_cases(),
    bench_cases=_bench_cases(),
    flops=_flops,
    bytes=_bytes,
    # Both sides sum K float32 products in different orders; their max errors against float64
    # fluctuate from draw to draw, so k leaves room for an unlucky draw on our side.
    tol_forward=Tolerance(k=4.0, floor=2e-6),
    tol_backward=Tolerance(k=4.0, floor=2e-6),
    devices=registry.kernel_devices(),
    variants=registry.cpu_variants(),
    params_doc={"shape": "input shape (..., in_features), e.g. 64x784",
                "out": "out_features",
                "bias": "true | false (default true)",
                "layout": "contiguous | weight_t | input_t | sliced (default contiguous)",
                "kind": "normal | hard | nan | inf (default normal)"},
    required=("shape", "out"),
    title="nn.Linear",
))

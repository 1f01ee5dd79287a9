"""batch_norm: dlkern.functional.batch_norm mirrors torch.nn.functional.batch_norm.

Kernels: csrc/core/{batch_norm.h, ref/batch_norm_ref.cpp, cpu/batch_norm_avx2.cpp,
cpu/batch_norm_cpu.cpp}; bindings and autograd: csrc/bindings/batch_norm.cpp.
"""
from __future__ import annotations

import math

import torch

from .. import registry
from ..registry import Case, Inputs, OpSpec, Tolerance
from ._fake import check_tensors
from ._inputs import spaced

_bn = torch.ops.dlkern.batch_norm.default
_bn_eager = _bn._op
_is_compiling = torch.compiler.is_compiling


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None,
               running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5) -> torch.Tensor:
    """Like torch.nn.functional.batch_norm: normalises each channel of input (N, C, *) with the
    batch statistics (training; running statistics updated in place with the unbiased variance)
    or the running statistics (eval). float32, on CPU or CUDA."""
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):
        raise TypeError(f"dlkern.batch_norm: argument 'momentum' must be a float, got "
                        f"{type(momentum).__name__} (nn.BatchNorm's momentum=None is the module's "
                        f"cumulative average: use dlkern.nn.BatchNorm2d)")
    if training and input.dim() >= 2 and input.shape[0] * math.prod(input.shape[2:]) == 1:
        raise ValueError(f"dlkern.batch_norm: expected more than 1 value per channel when "
                         f"training, got input size {tuple(input.shape)}")
    op = _bn if _is_compiling() else _bn_eager
    return op(input, weight, bias, running_mean, running_var, training, float(momentum),
              float(eps))[0]


# ---- fake kernels --------------------------------------------------------------------------

@torch.library.register_fake("dlkern::batch_norm")
def _bn_fake(input, weight, bias, running_mean, running_var, training, momentum, eps):
    check_tensors("batch_norm", input, weight=weight, bias=bias, running_mean=running_mean,
                  running_var=running_var)
    torch._check(2 <= input.dim() <= 5, lambda: "dlkern.batch_norm: argument 'input' must be "
                 f"(N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W), got {tuple(input.shape)}")
    c = input.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        torch._check(t is None or (t.dim() == 1 and t.shape[0] == c), lambda: (
            f"dlkern.batch_norm: argument '{name}' must have shape [{c}] (the channels of input "
            f"{list(input.shape)}), got {list(t.shape)}"))
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            input.new_empty((c,)), input.new_empty((c,)))


@torch.library.register_fake("dlkern::batch_norm_backward")
def _bn_backward_fake(grad_output, input, weight, save_mean, save_invstd, training, output_mask):
    c = input.shape[1]
    return (torch.empty_like(input, memory_format=torch.contiguous_format)
            if output_mask[0] else None,
            input.new_empty((c,)) if output_mask[1] else None,
            input.new_empty((c,)) if output_mask[2] else None)


# ---- registry entry --------------------------------------------------------------------------

def _make_inputs(p, device: str, seed: int) -> Inputs:
    """params: shape (N, C, ...), training (default true), affine (default true), stats (running
    statistics given, default true), momentum (0.1), eps (1e-5), kind (normal | large_mean: mean
    1e4, std 1 | nan), layout (contiguous | channels_last | strided)."""
    shape = tuple(p["shape"])
    c = shape[1]
    kind, layout = p.get("kind", "normal"), p.get("layout", "contiguous")
    g = torch.Generator().manual_seed(seed)
    make = list(shape)
    if layout == "strided":
        make[-1] *= 2
    x = torch.randn(make, generator=g) * 2 + 0.5
    if kind == "large_mean":
        x = torch.randn(make, generator=g) + 1e4
    elif kind == "nan":
        x = spaced(x, 4, float("nan"))
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else
                         torch.channels_last_3d if x.dim() == 5 else torch.contiguous_format)
    affine = p.get("affine", True)
    w = (torch.rand(c, generator=g) + 0.5) if affine else None
    b = torch.randn(c, generator=g) if affine else None
    stats = p.get("stats", True)
    rm = torch.randn(c, generator=g) * 0.1 if stats else None
    rv = (torch.rand(c, generator=g) + 0.5) if stats else None
    kw = {"input": x.to(device), "running_mean": None if rm is None else rm.to(device),
          "running_var": None if rv is None else rv.to(device),
          "weight": None if w is None else w.to(device), "bias": None if b is None else b.to(device),
          "training": p.get("training", True), "momentum": p.get("momentum", 0.1),
          "eps": p.get("eps", 1e-5)}
    return Inputs(kw, grad=("input",) + (("weight", "bias") if affine else ()))


def _edge_cases():
    cases = []
    for training in (True, False):
        t = "train" if training else "eval"
        for shape in [(2, 3), (5, 1), (4, 7, 9), (2, 3, 5, 5), (1, 3, 4, 4), (3, 2, 1, 1),
                      (2, 17, 13, 31), (8, 64, 7, 7), (2, 3, 2, 3, 4), (1, 2, 129, 130),
                      (0, 3, 4, 4), (37, 17), (2, 300), (20, 9, 2), (130, 300), (0, 5)]:
            name = "x".join(map(str, shape))
            cases.append(Case(f"{name} {t}", {"shape": shape, "training": training}))
        for mom in (0.0, 1.0, 0.5):
            cases.append(Case(f"2x3x5x5 {t} momentum {mom}", {"shape": (2, 3, 5, 5),
                                                              "training": training,
                                                              "momentum": mom}))
        cases += [
            Case(f"4x3x8x8 {t} large mean", {"shape": (4, 3, 8, 8), "training": training,
                                              "kind": "large_mean"}),
            Case(f"4x3x6x6 {t} no affine", {"shape": (4, 3, 6, 6), "training": training,
                                             "affine": False}),
            Case(f"4x3x6x6 {t} channels_last", {"shape": (4, 3, 6, 6), "training": training,
                                                 "layout": "channels_last"}),
            Case(f"4x3x6x6 {t} strided", {"shape": (4, 3, 6, 6), "training": training,
                                           "layout": "strided"}),
            Case(f"4x3x6x6 {t} nan", {"shape": (4, 3, 6, 6), "training": training,
                                       "kind": "nan"}),
            Case(f"4x5x7 {t} eps 0.1", {"shape": (4, 5, 7), "training": training, "eps": 0.1}),
            # the narrow path (spatial extent below 8)
            Case(f"100x9 {t} large mean", {"shape": (100, 9), "training": training,
                                            "kind": "large_mean"}),
            Case(f"33x8x3 {t} nan", {"shape": (33, 8, 3), "training": training, "kind": "nan"}),
        ]
    cases.append(Case("4x3x6x6 train no running stats", {"shape": (4, 3, 6, 6), "stats": False}))
    cases.append(Case("1x3x224x224 train large mean", {"shape": (1, 3, 224, 224),
                                                       "kind": "large_mean"}))
    return tuple(cases)


_BENCH = (
    Case("BatchNorm", {"shape": (1, 3, 224, 224)}, suites=("layers", "batch_norm")),
    Case("8x64x56x56", {"shape": (8, 64, 56, 56)}, suites=("batch_norm",)),
    Case("32x256x14x14", {"shape": (32, 256, 14, 14)}, suites=("batch_norm",)),
    Case("8x512x7x7", {"shape": (8, 512, 7, 7)}, suites=("batch_norm",)),
    # BatchNorm1d: after a Linear (N, C), in an MLP head or a tabular model, and over short
    # sequences (N, C, L): the narrow path
    Case("64x512", {"shape": (64, 512)}, suites=("batch_norm",)),
    Case("256x1024", {"shape": (256, 1024)}, suites=("batch_norm",)),
    Case("1024x4096", {"shape": (1024, 4096)}, suites=("batch_norm",)),
    Case("4096x64", {"shape": (4096, 64)}, suites=("batch_norm",)),
    Case("128x256x4", {"shape": (128, 256, 4)}, suites=("batch_norm",)),
)


def _numel(p):
    return math.prod(p["shape"])


def _flops(p):
    e = _numel(p)
    train = p.get("training", True)
    # stats: sub, add, fma (3); normalise: sub, fma (3) / backward: reductions 3, dx 4
    return {"forward": (6 if train else 3) * e, "backward": (7 if train else 5) * e}


def _bytes(p):
    e = _numel(p)
    # the minimum: read x and write y / read x and dy, write dx
    return {"forward": 8 * e, "backward": 12 * e}


registry.register(OpSpec(
    name="batch_norm",
    fn=batch_norm,
    ref=lambda input, running_mean, running_var, weight, bias, training, momentum, eps:
        torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias, training,
                                       momentum, eps),
    make_inputs=_make_inputs,
    edge_cases=_edge_cases(),
    bench_cases=_BENCH,
    flops=_flops,
    bytes=_bytes,
    tol_forward=Tolerance(k=4.0, floor=2e-6),
    tol_backward=Tolerance(k=4.0, floor=4e-6),
    # float64: torch's float32 batchnorm sums in double, so its error scaled by eps64/eps32 (the
    # float64 stand-in, Tolerance.at) is about one float64 rounding, which no float64 sum over a
    # channel (torch's own in another order included) can promise. The floor, 1e-12 of the largest
    # value, holds a float64 sum of 1e8 terms in any order; float32 arithmetic is 1e5 times over.
    tol_dtypes={"float64": (Tolerance(k=4.0, floor=1e-12), Tolerance(k=4.0, floor=1e-12))},
    devices=registry.kernel_devices(),
    variants=registry.cpu_variants(),
    params_doc={"shape": "input shape (N, C, ...), e.g. 8x64x56x56",
                "training": "true (batch statistics, default) | false (running statistics)",
                "affine": "true | false (weight and bias, default true)",
                "stats": "true | false (running statistics given, default true)",
                "momentum": "running-statistics momentum (default 0.1)",
                "eps": "added to the variance (default 1e-5)",
                "kind": "normal | large_mean | nan (default normal)",
                "layout": "contiguous | channels_last | strided (default contiguous)"},
    title="nn.BatchNorm",
    eval_kwargs=lambda kw: {**kw, "training": False},
    mutates=("running_mean", "running_var"),
))

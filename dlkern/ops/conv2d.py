"""conv2d: dlkern.functional.conv2d mirrors torch.nn.functional.conv2d.

Kernels: csrc/core/{conv2d.h, ref/conv2d_ref.cpp, cpu/conv2d_avx2.cpp, cpu/conv2d_avx512.cpp,
cpu/conv2d_cpu.cpp} on the GEMM core (gemm.h); bindings and autograd: csrc/bindings/conv2d.cpp. The op itself takes explicit
[top, bottom, left, right] padding; this module turns torch's argument forms ('same', 'valid',
ints, pairs) and unbatched 3-D inputs into that.
"""
from __future__ import annotations

import contextlib
import functools
import math
from typing import Sequence

import torch

from .. import registry
from ..registry import Case, Inputs, Tolerance
from ._fake import check_tensors
from ._inputs import offset_with_outliers, spaced

_conv2d = torch.ops.dlkern.conv2d.default
_conv2d_eager = _conv2d._op
_is_compiling = torch.compiler.is_compiling



def _pair(name: str, value, minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value, value)
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) in (1, 2) \
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        out = (value[0], value[0]) if len(value) == 1 else (value[0], value[1])
    else:
        raise TypeError(f"dlkern.conv2d: argument '{name}' must be an int or a pair of ints, "
                        f"got {value!r}")
    if min(out) < minimum:
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"dlkern.conv2d: argument '{name}' must be {what}, got {value!r}")
    return out


def _padding(padding, stride: tuple[int, int], dilation: tuple[int, int],
             kernel: tuple[int, int]) -> list[int]:
    """[top, bottom, left, right] for an int, a pair, 'valid' or 'same'."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise ValueError(f"dlkern.conv2d: argument 'padding' must be 'same', 'valid', an int or "
                             f"a pair of ints, got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"dlkern.conv2d: padding='same' needs stride 1 (as in torch), got "
                             f"stride {stride}")
        out = []
        for d, k in zip(dilation, kernel):
            total = d * (k - 1)
            out += [total // 2, total - total // 2]   # torch puts the odd pixel at the end
        return out
    ph, pw = _pair("padding", padding, 0)
    return [ph, ph, pw, pw]


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride=1, padding=0, dilation=1, groups: int = 1) -> torch.Tensor:
    """conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1), like
    torch.nn.functional.conv2d: input (N, C, H, W) or unbatched (C, H, W), weight
    (out_channels, C / groups, kH, kW), bias (out_channels); stride, padding and dilation an int
    or a pair, padding also 'same' or 'valid'. float32, on CPU or CUDA."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"dlkern.conv2d: argument 'groups' must be a positive int, got {groups!r}")
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError("dlkern.conv2d: arguments 'input' and 'weight' must be tensors, got "
                        f"{type(input).__name__} and {type(weight).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError("dlkern.conv2d: argument 'input' must be 3-D (C, H, W) or 4-D "
                         f"(N, C, H, W), got shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise ValueError("dlkern.conv2d: argument 'weight' must be 4-D (out_channels, "
                         f"in_channels / groups, kH, kW), got shape {tuple(weight.shape)}")
    st = _pair("stride", stride, 1)
    dil = _pair("dilation", dilation, 1)
    pad = _padding(padding, st, dil, (weight.shape[2], weight.shape[3]))
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    op = _conv2d if _is_compiling() else _conv2d_eager
    y = op(x, weight, bias, list(st), pad, list(dil), groups)
    return y.squeeze(0) if unbatched else y


def algorithm(input: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1,
              groups: int = 1) -> str:
    """The CPU algorithm conv2d runs for these arguments: 'gemm1x1', 'im2col', 'depthwise' or
    'winograd' (the rule is in csrc/core/conv2d.h; `preference` moves it)."""
    st, dil = _pair("stride", stride, 1), _pair("dilation", dilation, 1)
    pad = _padding(padding, st, dil, (weight.shape[2], weight.shape[3]))
    x = input.unsqueeze(0) if input.dim() == 3 else input
    return torch.ops.dlkern._conv2d_algorithm(x, weight, list(st), pad, list(dil), groups)


PREFERENCES = ("auto", "winograd", "gemm")


@contextlib.contextmanager
def preference(name: str):
    """Runs a block with the CPU conv2d's choice between Winograd and the other routes for 3x3
    stride-1 layers set to `name`: 'auto' (the measured rules of csrc/core/conv2d.h: ungrouped
    layers from some channels and tiles on), 'winograd' (every such layer, grouped too) or 'gemm'
    (none); restores the previous choice after. Process-
    wide, as dlkern.cpu_isa. The report's custom:winograd and custom:gemm variants."""
    if name not in PREFERENCES:
        raise ValueError(f"dlkern.conv2d preference: argument 'name' must be one of "
                         f"{', '.join(map(repr, PREFERENCES))}, got {name!r}")
    previous = torch.ops.dlkern._conv2d_preference()
    torch.ops.dlkern._set_conv2d_preference(name)
    try:
        yield
    finally:
        torch.ops.dlkern._set_conv2d_preference(previous)


# ---- fake kernels --------------------------------------------------------------------------

def _out_shape(op, input, weight, stride, padding, dilation, groups, bias=None):
    check_tensors(op, input, weight=weight, bias=bias)
    torch._check(input.dim() == 4 and weight.dim() == 4,
                 lambda: f"dlkern.{op}: input and weight must be 4-D, got {tuple(input.shape)} "
                         f"and {tuple(weight.shape)}")
    torch._check(weight.shape[0] >= 1, lambda: f"dlkern.{op}: argument 'weight' must have at "
                 f"least one output channel (dim 0), got shape {list(weight.shape)}")
    torch._check(weight.shape[1] * groups == input.shape[1],
                 lambda: f"dlkern.{op}: input has {input.shape[1]} channels but weight "
                         f"{tuple(weight.shape)} with groups={groups} expects "
                         f"{weight.shape[1] * groups}")
    eh = input.shape[2] + padding[0] + padding[1]
    ew = input.shape[3] + padding[2] + padding[3]
    kh = dilation[0] * (weight.shape[2] - 1) + 1
    kw = dilation[1] * (weight.shape[3] - 1) + 1
    return (input.shape[0], weight.shape[0], (eh - kh) // stride[0] + 1, (ew - kw) // stride[1] + 1)


@torch.library.register_fake("dlkern::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    return input.new_empty(_out_shape("conv2d", input, weight, stride, padding, dilation, groups,
                                      bias))


@torch.library.register_fake("dlkern::conv2d_backward")
def _conv2d_backward_fake(grad_output, input, weight, stride, padding, dilation, groups,
                          output_mask):
    _out_shape("conv2d_backward", input, weight, stride, padding, dilation, groups)
    dx = input.new_empty(input.shape) if output_mask[0] else None
    dw = weight.new_empty(weight.shape) if output_mask[1] else None
    db = weight.new_empty((weight.shape[0],)) if output_mask[2] else None
    return dx, dw, db


# ---- registry entry --------------------------------------------------------------------------

def _geometry(p):
    shape = tuple(p["shape"])
    k = p.get("kernel", 3)
    kh, kw = (k, k) if isinstance(k, int) else tuple(k)
    groups = int(p.get("groups", 1))
    c = shape[-3]
    return shape, int(p["out"]), (kh, kw), groups, c


def _make_inputs(p, device: str, seed: int) -> Inputs:
    """params: shape (N, C, H, W) or (C, H, W), out (out_channels), kernel (int or pair,
    default 3), stride, padding (int, pair, 'same' or 'valid'), dilation (default 1), groups
    (default 1), bias (default true), layout (contiguous | sliced: the input every other column,
    a non-contiguous view | channels_last), kind (normal | hard | nan | inf)."""
    shape, out, (kh, kw), groups, c = _geometry(p)
    layout, kind = p.get("layout", "contiguous"), p.get("kind", "normal")
    g = torch.Generator().manual_seed(seed)
    if layout == "sliced":
        x = torch.randn(*shape[:-1], 2 * shape[-1], generator=g)[..., ::2]
    else:
        x = torch.randn(shape, generator=g)
        if layout == "channels_last" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
    fan_in = max(1, c // groups * kh * kw)
    bound = 1 / math.sqrt(fan_in)
    w = (torch.rand(out, c // groups, kh, kw, generator=g) * 2 - 1).mul_(bound)
    b = (torch.rand(out, generator=g) * 2 - 1).mul_(bound) if p.get("bias", True) else None
    if kind == "hard":
        x = offset_with_outliers(x, g)
    elif kind == "nan":
        x = spaced(x, 3, float("nan"))
    elif kind == "inf" and x.numel():
        x = x.clone()
        x.view(-1)[x.numel() // 2] = float("inf")
    kw_ = {"input": x.to(device), "weight": w.to(device),
           "bias": None if b is None else b.to(device),
           "stride": p.get("stride", 1), "padding": p.get("padding", 0),
           "dilation": p.get("dilation", 1), "groups": groups}
    grad = ("input", "weight") + (("bias",) if b is not None else ())
    return Inputs(kw_, grad=grad)


def _edge_cases():
    cases = []

    def add(name, shape, out, **kw):
        cases.append(Case(name, {"shape": shape, "out": out, **kw}))

    for k in (1, 2, 3, 5, 7):                       # kernels, with a stride and a padding each
        for stride, pad in ((1, 0), (2, 1), (3, 3)):
            if 13 + 2 * pad >= k:
                add(f"k{k} s{stride} p{pad} 2x3x13x13 -> 5", (2, 3, 13, 13), 5, kernel=k,
                    stride=stride, padding=pad, bias=stride != 3)
    for k in (2, 3, 4, 5):                          # 'same' (even kernels pad unequally), 'valid'
        add(f"k{k} same 2x3x9x10 -> 4", (2, 3, 9, 10), 4, kernel=k, padding="same")
    add("k3 same dilation 2 1x2x7x9 -> 3", (1, 2, 7, 9), 3, kernel=3, padding="same", dilation=2)
    add("k3 valid 1x2x7x9 -> 3", (1, 2, 7, 9), 3, kernel=3, padding="valid")
    add("k3 dilation 2 pad 2 2x3x13x13 -> 4", (2, 3, 13, 13), 4, kernel=3, padding=2, dilation=2)
    add("k5 dilation 2 stride 2 2x3x31x31 -> 4", (2, 3, 31, 31), 4, kernel=5, stride=2,
        padding=1, dilation=2)
    add("k (3, 5) stride (1, 2) pad (1, 0) 2x3x11x13 -> 4", (2, 3, 11, 13), 4, kernel=(3, 5),
        stride=(1, 2), padding=(1, 0))
    for c in (1, 3, 17, 64):                        # channels across the micro-tile
        add(f"channels {c} 2x{c}x5x5 -> {c}", (2, c, 5, 5), c, kernel=3, padding=1)
    for hw in (1, 5, 13, 31):                       # odd spatial sizes
        add(f"spatial {hw} 1x3x{hw}x{hw} -> 6", (1, 3, hw, hw), 6, kernel=3, padding=1)
    add("groups 2 2x4x9x9 -> 6", (2, 4, 9, 9), 6, kernel=3, padding=1, groups=2)
    add("groups 2 stride 2 2x6x9x9 -> 4", (2, 6, 9, 9), 4, kernel=3, stride=2, padding=1, groups=2)
    # grouped forwards (and backward data at stride 1) as direct products: output channels per
    # group past a register block, stride 2 and 3, a small image, a NaN, channels_last
    add("groups 2 stride 2 2x12x14x14 -> 26", (2, 12, 14, 14), 26, kernel=3, stride=2,
        padding=1, groups=2)
    add("groups 7 3x21x9x11 -> 14", (3, 21, 9, 11), 14, kernel=3, padding=1, groups=7)
    add("groups 4 stride 3 dilation 2 2x16x23x19 -> 32", (2, 16, 23, 19), 32, kernel=3,
        stride=3, dilation=2, groups=4)
    add("groups 2 5x5 1x40x10x10 -> 40", (1, 40, 10, 10), 40, kernel=5, padding=2, groups=2)
    add("groups 2 nan stride 2 2x8x9x9 -> 8", (2, 8, 9, 9), 8, kernel=3, stride=2, padding=1,
        groups=2, kind="nan")
    add("groups 4 channels_last 2x16x7x7 -> 16", (2, 16, 7, 7), 16, kernel=3, padding=1,
        groups=4, layout="channels_last")
    add("depthwise 2x17x13x13", (2, 17, 13, 13), 17, kernel=3, padding=1, groups=17)
    add("depthwise x2 stride 2 2x5x13x13", (2, 5, 13, 13), 10, kernel=5, stride=2, padding=2,
        groups=5)
    add("depthwise dilation 2 1x8x31x31", (1, 8, 31, 31), 8, kernel=3, padding=2, dilation=2,
        groups=8)
    add("depthwise stride 3 1x4x13x13", (1, 4, 13, 13), 4, kernel=3, stride=3, padding=1, groups=4)
    add("depthwise 7x7 stride 2 2x3x23x29", (2, 3, 23, 29), 3, kernel=7, stride=2, padding=3,
        groups=3)
    add("depthwise 7x7 on 7x7 planes 2x33x7x7", (2, 33, 7, 7), 33, kernel=7, padding=3,
        groups=33)
    add("depthwise 5x5 stride 2 sliced 2x20x14x14", (2, 20, 14, 14), 20, kernel=5, stride=2,
        padding=2, groups=20, layout="sliced")
    add("depthwise wide 1x2x5x150", (1, 2, 5, 150), 2, kernel=5, padding=2, groups=2)
    add("depthwise 1x1 plane 2x4x1x1", (2, 4, 1, 1), 4, kernel=3, padding=1, groups=4)
    add("depthwise channels_last 2x8x9x9", (2, 8, 9, 9), 8, kernel=3, padding=1, groups=8,
        layout="channels_last")
    add("depthwise inf 2x4x9x9", (2, 4, 9, 9), 4, kernel=3, padding=1, groups=4, kind="inf")
    add("depthwise nan 2x4x9x9 stride 2", (2, 4, 9, 9), 4, kernel=3, stride=2, padding=1,
        groups=4, kind="nan")
    add("depthwise hard 2x4x9x9 5x5", (2, 4, 9, 9), 8, kernel=5, padding=2, groups=4, kind="hard")
    add("1x1 2x64x7x7 -> 33", (2, 64, 7, 7), 33, kernel=1)
    add("1x1 stride 2 2x17x9x9 -> 20", (2, 17, 9, 9), 20, kernel=1, stride=2)
    add("1x1 groups 2 2x6x5x5 -> 4 no bias", (2, 6, 5, 5), 4, kernel=1, groups=2, bias=False)
    add("1x1 of 1x1 images 7x48x1x1 -> 12", (7, 48, 1, 1), 12, kernel=1)
    add("1x1 of 1x1 images groups 3 5x12x1x1 -> 9", (5, 12, 1, 1), 9, kernel=1, groups=3)
    add("batch 1 1x3x8x8 -> 16", (1, 3, 8, 8), 16, kernel=3, padding=1)
    add("empty batch 0x3x8x8 -> 4", (0, 3, 8, 8), 4, kernel=3, padding=1)
    add("unbatched 3x9x9 -> 5", (3, 9, 9), 5, kernel=3, padding=1)
    add("no bias 2x3x9x9 -> 5", (2, 3, 9, 9), 5, kernel=3, bias=False)
    add("sliced input 2x3x9x9 -> 5", (2, 3, 9, 9), 5, kernel=3, padding=1, layout="sliced")
    add("channels_last input 2x3x9x9 -> 5", (2, 3, 9, 9), 5, kernel=3, padding=1,
        layout="channels_last")
    add("wide 1x3x5x70 -> 20 stride 2", (1, 3, 5, 70), 20, kernel=5, stride=2, padding=2)
    add("deep 1x40x6x6 -> 7", (1, 40, 6, 6), 7, kernel=3, padding=1)
    add("hard 2x8x9x9 -> 6", (2, 8, 9, 9), 6, kernel=3, padding=1, kind="hard")
    add("nan 2x3x9x9 -> 4", (2, 3, 9, 9), 4, kernel=3, padding=1, kind="nan")
    add("inf 2x3x9x9 -> 4", (2, 3, 9, 9), 4, kernel=3, padding=1, kind="inf")
    # 3x3 stride 1 with channels and tiles enough for Winograd's rule: odd sizes, padding 0 and
    # 2, the hard offsets, and a NaN and an infinity (which send the call to im2col)
    add("winograd 2x64x28x28 -> 64", (2, 64, 28, 28), 64, kernel=3, padding=1)
    add("winograd odd 2x64x29x27 -> 65 pad 2", (2, 64, 29, 27), 65, kernel=3, padding=2)
    add("winograd pad 0 3x66x25x23 -> 64 no bias", (3, 66, 25, 23), 64, kernel=3, bias=False)
    add("winograd hard 2x64x28x28 -> 64", (2, 64, 28, 28), 64, kernel=3, padding=1, kind="hard")
    add("winograd nan 2x64x28x28 -> 64", (2, 64, 28, 28), 64, kernel=3, padding=1, kind="nan")
    add("winograd inf 2x64x28x28 -> 64", (2, 64, 28, 28), 64, kernel=3, padding=1, kind="inf")
    # fewer channels: the weight gradient alone by Winograd (its own rule), an infinity there
    add("winograd weight 2x16x20x20 -> 24", (2, 16, 20, 20), 24, kernel=3, padding=1)
    add("winograd weight inf 2x16x20x20 -> 24", (2, 16, 20, 20), 24, kernel=3, padding=1,
        kind="inf")
    return tuple(cases)


def _bench_cases():
    cases = []
    for k, stride in ((3, 1), (5, 1), (3, 2), (5, 2)):
        cases.append(Case(f"Conv{k}x{k}/{stride}", {"shape": (1, 3, 224, 224), "out": 64,
                                                    "kernel": k, "stride": stride,
                                                    "padding": k // 2}, suites=("layers",)))
    for shape, out in (((4, 3, 32, 32), 16), ((8, 32, 64, 64), 64), ((8, 64, 128, 128), 128)):
        cases.append(Case(f"input={'x'.join(map(str, shape))} kernel=3 channels={out}",
                          {"shape": shape, "out": out, "kernel": 3, "padding": 1},
                          suites=("tensorgrad",)))
    for shape, out, k, stride in (((8, 3, 224, 224), 64, 7, 2), ((8, 64, 56, 56), 64, 3, 1),
                                  ((8, 256, 56, 56), 64, 1, 1), ((8, 128, 28, 28), 128, 3, 1),
                                  ((8, 256, 14, 14), 256, 3, 1), ((8, 512, 7, 7), 512, 3, 1),
                                  ((8, 512, 7, 7), 2048, 1, 1)):
        cases.append(Case(f"{'x'.join(map(str, shape[1:]))} -> {out} {k}x{k}/{stride}",
                          {"shape": shape, "out": out, "kernel": k, "stride": stride,
                           "padding": k // 2, "bias": False}, suites=("resnet",)))
    # the conv families of MobileNet, EfficientNet, ConvNeXt, RegNet and ResNeXt, and the
    # squeeze-excitation GEMVs, at batch 8: (family, input, out, kernel, stride, groups)
    for fam, shape, out, k, stride, groups in (
            ("depthwise", (8, 32, 112, 112), 32, 3, 1, 32),
            ("depthwise", (8, 96, 112, 112), 96, 3, 2, 96),
            ("depthwise", (8, 144, 56, 56), 144, 3, 1, 144),
            ("depthwise", (8, 144, 56, 56), 144, 5, 2, 144),
            ("depthwise", (8, 240, 28, 28), 240, 5, 1, 240),
            ("depthwise", (8, 672, 14, 14), 672, 5, 1, 672),
            ("depthwise", (8, 96, 56, 56), 96, 7, 1, 96),
            ("depthwise", (8, 768, 7, 7), 768, 7, 1, 768),
            ("grouped", (8, 64, 56, 56), 64, 3, 1, 8),
            ("grouped", (8, 128, 28, 28), 128, 3, 1, 8),
            ("grouped", (8, 256, 28, 28), 256, 3, 2, 16),
            ("grouped", (8, 432, 14, 14), 432, 3, 1, 9),
            ("grouped", (8, 128, 56, 56), 128, 3, 1, 32),
            ("1x1", (8, 1024, 14, 14), 256, 1, 1, 1),
            ("1x1", (8, 256, 14, 14), 1024, 1, 1, 1),
            ("1x1", (8, 960, 7, 7), 160, 1, 1, 1),
            ("SE", (8, 96, 1, 1), 24, 1, 1, 1),
            ("SE", (8, 1152, 1, 1), 48, 1, 1, 1),
            ("SE", (8, 48, 1, 1), 1152, 1, 1, 1)):
        g = f" g{groups}" if 1 < groups < shape[1] else ""
        cases.append(Case(f"{fam} {'x'.join(map(str, shape[1:]))} -> {out} {k}x{k}/{stride}{g}",
                          {"shape": shape, "out": out, "kernel": k, "stride": stride,
                           "padding": k // 2, "groups": groups}, suites=("conv",)))
    return tuple(cases)


def _dims(p):
    shape, out, (kh, kw), groups, c = _geometry(p)
    n = math.prod(shape[:-3])
    h, w = shape[-2], shape[-1]
    st = _pair("stride", p.get("stride", 1), 1)
    dil = _pair("dilation", p.get("dilation", 1), 1)
    pad = _padding(p.get("padding", 0), st, dil, (kh, kw))
    oh = (h + pad[0] + pad[1] - dil[0] * (kh - 1) - 1) // st[0] + 1
    ow = (w + pad[2] + pad[3] - dil[1] * (kw - 1) - 1) // st[1] + 1
    return n, c, h, w, out, kh, kw, groups, oh, ow, bool(p.get("bias", True))


def _flops(p):
    n, c, h, w, k, kh, kw, g, oh, ow, bias = _dims(p)
    macs = n * k * oh * ow * (c // g) * kh * kw
    out = n * k * oh * ow
    return {"forward": 2 * macs + (out if bias else 0), "backward": 4 * macs + (out if bias else 0)}


def _bytes(p):
    n, c, h, w, k, kh, kw, g, oh, ow, bias = _dims(p)
    x, wt, y = n * c * h * w, k * (c // g) * kh * kw, n * k * oh * ow
    # forward reads x, w and writes y; backward reads dy, x, w and writes dx, dw (and db)
    return {"forward": 4 * (x + wt + y + (k if bias else 0)),
            "backward": 4 * (y + x + wt + x + wt + (k if bias else 0))}


registry.register(registry.OpSpec(
    name="conv2d",
    fn=conv2d,
    ref=lambda input, weight, bias, stride, padding, dilation, groups:
        torch.nn.functional.conv2d(input, weight, bias, stride, padding, dilation, groups),
    make_inputs=_make_inputs,
    edge_cases=_edge_cases(),
    bench_cases=_bench_cases(),
    flops=_flops,
    bytes=_bytes,
    # sums of C/groups*kH*kW (forward), out*kH*kW (dx) and N*H*W (dw) float32 products in
    # orders that differ from torch's
    tol_forward=Tolerance(k=4.0, floor=2e-6),
    tol_backward=Tolerance(k=4.0, floor=4e-6),
    devices=registry.kernel_devices(),
    variants={**registry.cpu_variants(), "winograd": functools.partial(preference, "winograd"),
              "gemm": functools.partial(preference, "gemm")},
    params_doc={"shape": "input shape (N, C, H, W) or (C, H, W), e.g. 8x64x56x56",
                "out": "out_channels",
                "kernel": "kernel size, int or pair (default 3)",
                "stride": "int or pair (default 1)",
                "padding": "int, pair, 'same' or 'valid' (default 0)",
                "dilation": "int or pair (default 1)",
                "groups": "int (default 1)",
                "bias": "true | false (default true)",
                "layout": "contiguous | sliced | channels_last (default contiguous)",
                "kind": "normal | hard | nan | inf (default normal)"},
    required=("shape", "out"),
    title="nn.Conv2d",
))

"""VGG and ResNet with torchvision's architecture and state_dict layout, built on layers that are
either dlkern's or torch's.

    model = dlkern.models.resnet50()                   # dlkern conv2d, batchnorm, linear
    ref = dlkern.models.resnet50(impl="torch")         # the same network on torch's layers
    ref.load_state_dict(model.state_dict())            # identical keys and shapes
    dlkern.models.set_impl(model, {"conv2d": "torch"}) # switch one kind of layer in place

torchvision is not a dependency (it is not installed everywhere dlkern is), so the networks are
defined here: the layer order, names, shapes and initialisation are torchvision's (VGG with
AdaptiveAvgPool2d((7, 7)) and the 4096-wide classifier; ResNet v1.5, stride in the 3x3 of a
bottleneck), so a torchvision checkpoint loads as it is. Convolution, batch normalisation, linear
(and softmax, in dlkern.nn.MultiheadAttention) run on the chosen implementation; ReLU, pooling,
dropout and the residual additions are torch's.

`impl` is "dlkern" or "torch" for every layer, or a mapping from a layer kind ("conv2d",
"batch_norm", "linear", "softmax", "multihead_attention") to "dlkern"/"torch" (kinds not named stay dlkern).
A conv2d, batch_norm, linear or softmax entry may also be a function of your own with the
functional's keyword arguments (linear(input, weight, bias), conv2d(input, weight, bias, stride,
padding, dilation, groups), batch_norm(input, running_mean, running_var, weight, bias, training,
momentum, eps), softmax(input, dim)): the layers of that kind call it, keeping torch.nn's module
bookkeeping (padding modes, running-statistics factors, softmax's implicit dim), and impl_of
says "callable". Such a function reaches torch.nn.Conv2d, BatchNorm1d/2d/3d, Linear and Softmax
modules only, not the projections or the softmax inside multihead attention. A model with a
function plugged in pickles when the function does (a state_dict always does).

    dlkern.models.set_impl(model, {"linear": my_linear})   # my kernel in every Linear layer

The dlkern modules subclass their torch.nn namesakes, so switching an existing model
(`set_impl`) swaps the modules' classes and keeps every parameter and buffer.
"""
from __future__ import annotations

import inspect
from typing import Callable, Mapping, Union

import torch
from torch import nn as tnn

from . import nn as dnn

__all__ = ["MODELS", "Impl", "KINDS", "VGG", "ResNet", "BasicBlock", "Bottleneck", "create",
           "set_impl", "impl_of", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "resnet18",
           "resnet34", "resnet50", "resnet101", "resnet152"]

Impl = Union[str, Mapping[str, Union[str, Callable]]]

# layer kind -> (torch class, dlkern class); the dlkern class subclasses the torch one
_PAIRS: dict[str, tuple[tuple[type, type], ...]] = {
    "conv2d": ((tnn.Conv2d, dnn.Conv2d),),
    "batch_norm": ((tnn.BatchNorm1d, dnn.BatchNorm1d), (tnn.BatchNorm2d, dnn.BatchNorm2d),
                   (tnn.BatchNorm3d, dnn.BatchNorm3d)),
    "linear": ((tnn.Linear, dnn.Linear),),
    "softmax": ((tnn.Softmax, dnn.Softmax),),
    "multihead_attention": ((tnn.MultiheadAttention, dnn.MultiheadAttention),),
}
KINDS = tuple(_PAIRS)
IMPLS = ("dlkern", "torch")


def _resolve(impl: Impl) -> dict[str, str | Callable]:
    """{kind: "dlkern" | "torch" | a function} for every kind; ValueError naming what is wrong."""
    if isinstance(impl, str):
        if impl not in IMPLS:
            raise ValueError(f"dlkern.models: argument 'impl' must be 'dlkern', 'torch' or a "
                             f"mapping of layer kinds to them, got {impl!r}")
        return {k: impl for k in KINDS}
    if not isinstance(impl, Mapping):
        raise TypeError(f"dlkern.models: argument 'impl' must be a str or a mapping, got "
                        f"{type(impl).__name__}")
    out = {k: "dlkern" for k in KINDS}
    for k, v in impl.items():
        if k not in KINDS:
            raise ValueError(f"dlkern.models: argument 'impl': unknown layer kind {k!r} "
                             f"(expected some of {', '.join(KINDS)})")
        if callable(v) and k in PLUGGABLE:
            why = _signature_problem(k, v)
            if why:
                raise ValueError(f"dlkern.models: argument 'impl': {k}: {why}")
            out[k] = v
            continue
        if not isinstance(v, str) or v not in IMPLS:
            also = " or a function with the functional's arguments" if k in PLUGGABLE else ""
            raise ValueError(f"dlkern.models: argument 'impl': {k} must be 'dlkern' or "
                             f"'torch'{also}, got {v!r}")
        out[k] = v
    return out


# the arguments a layer of each kind passes its function, by keyword (the functional's names)
PLUGGABLE = {
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "batch_norm": ("input", "running_mean", "running_var", "weight", "bias", "training",
                   "momentum", "eps"),
    "linear": ("input", "weight", "bias"),
    "softmax": ("input", "dim"),
}
_PLUGGED: dict[tuple[type, int], tuple[type, Callable]] = {}   # (dlkern class, id(fn)) -> class


def _signature_problem(kind: str, fn: Callable) -> str | None:
    """Why `fn` cannot take a `kind` layer's keyword arguments (None when it can, or when it has
    no signature to read)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(**{n: None for n in PLUGGABLE[kind]})
    except TypeError as e:
        return (f"{getattr(fn, '__name__', fn)!s}{sig} does not take {kind}'s arguments "
                f"({', '.join(PLUGGABLE[kind])}): {e}")
    return None


def _replug(dl_cls: type, fn: Callable, state: dict) -> tnn.Module:
    """Unpickling (and deepcopy) of a plugged layer: dlkern's module, plugged again."""
    m = dl_cls.__new__(dl_cls)
    m.__setstate__(state)
    m.__class__ = _plugged(dl_cls, fn)
    return m


def _plugged(dl_cls: type, fn: Callable) -> type:
    """A subclass of `dl_cls` whose layers call `fn` with their arguments by keyword. It pickles
    as dlkern's class plus `fn` (which must itself be picklable to save the whole model)."""
    key = (dl_cls, id(fn))
    if key not in _PLUGGED:
        kind = next(k for k, pairs in _PAIRS.items() if any(d is dl_cls for _, d in pairs))
        names = PLUGGABLE[kind]

        def kernel(*args):
            return fn(**dict(zip(names, args)))
        cls = type(dl_cls.__name__, (dl_cls,), {
            "_kernel": staticmethod(kernel), "__module__": dl_cls.__module__, "_plugged_fn": fn,
            "__reduce_ex__": lambda self, protocol: (_replug, (dl_cls, fn, self.__dict__))})
        _PLUGGED[key] = (cls, fn)        # fn kept alive, so its id is not reused
    return _PLUGGED[key][0]


def _pick(kind: str, torch_cls: type, choice) -> type:
    """The class a layer of `kind` gets: torch's, dlkern's, or dlkern's calling a function."""
    dl_cls = dict(_PAIRS[kind])[torch_cls]
    if choice == "torch":
        return torch_cls
    return dl_cls if choice == "dlkern" else _plugged(dl_cls, choice)


class _Layers:
    """The layer classes a model is built from, per kind."""

    def __init__(self, impl: Impl):
        which = _resolve(impl)
        self.Conv2d = _pick("conv2d", tnn.Conv2d, which["conv2d"])
        self.BatchNorm2d = _pick("batch_norm", tnn.BatchNorm2d, which["batch_norm"])
        self.Linear = _pick("linear", tnn.Linear, which["linear"])


def _kind_of(m: tnn.Module) -> tuple[str, type, type] | None:
    """(kind, torch class, dlkern class) when `m` is a layer set_impl can switch."""
    cls = type(m)
    for kind, pairs in _PAIRS.items():
        for torch_cls, dl_cls in pairs:
            if cls in (torch_cls, dl_cls) or (cls.__bases__ == (dl_cls,)
                                              and "_plugged_fn" in cls.__dict__):
                return kind, torch_cls, dl_cls
    return None


def set_impl(model: tnn.Module, impl: Impl) -> tnn.Module:
    """Switches every conv2d / batch_norm / linear / softmax / multihead_attention module of
    `model` (any module, not only this file's) to dlkern's or torch's class, or to one calling a
    function of yours, in place, keeping its parameters, buffers and hooks. Returns the model."""
    which = _resolve(impl)
    for m in model.modules():
        found = _kind_of(m)
        if found:
            kind, torch_cls, _ = found
            m.__class__ = _pick(kind, torch_cls, which[kind])
    return model


def impl_of(model: tnn.Module) -> dict[str, str]:
    """{kind: "dlkern" | "torch" | "callable" | "mixed"} for the kinds present in `model`
    ("callable": every layer of the kind calls the same function of yours)."""
    seen: dict[str, set] = {}
    for m in model.modules():
        found = _kind_of(m)
        if found:
            kind, torch_cls, dl_cls = found
            which = ("torch" if type(m) is torch_cls else "dlkern" if type(m) is dl_cls
                     else ("callable", id(type(m)._plugged_fn)))
            seen.setdefault(kind, set()).add(which)
    return {k: ("mixed" if len(v) > 1 else v.pop() if isinstance(next(iter(v)), str)
                else "callable") for k, v in seen.items()}


# ---- VGG -----------------------------------------------------------------------------------

_VGG_CFGS = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


class VGG(tnn.Module):
    """torchvision.models.VGG: `features` (3x3 convolutions, optional batchnorm, ReLU, max
    pooling), AdaptiveAvgPool2d((7, 7)), `classifier` (4096, 4096, num_classes with dropout)."""

    def __init__(self, cfg, batch_norm: bool = False, num_classes: int = 1000,
                 dropout: float = 0.5, impl: Impl = "dlkern"):
        super().__init__()
        L = _Layers(impl)
        layers: list[tnn.Module] = []
        c_in = 3
        for v in cfg:
            if v == "M":
                layers.append(tnn.MaxPool2d(kernel_size=2, stride=2))
                continue
            layers.append(L.Conv2d(c_in, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(L.BatchNorm2d(v))
            layers.append(tnn.ReLU(inplace=True))
            c_in = v
        self.features = tnn.Sequential(*layers)
        self.avgpool = tnn.AdaptiveAvgPool2d((7, 7))
        self.classifier = tnn.Sequential(
            L.Linear(512 * 7 * 7, 4096), tnn.ReLU(True), tnn.Dropout(p=dropout),
            L.Linear(4096, 4096), tnn.ReLU(True), tnn.Dropout(p=dropout),
            L.Linear(4096, num_classes))
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                tnn.init.constant_(m.bias, 0)
            elif isinstance(m, tnn.BatchNorm2d):
                tnn.init.constant_(m.weight, 1)
                tnn.init.constant_(m.bias, 0)
            elif isinstance(m, tnn.Linear):
                tnn.init.normal_(m.weight, 0, 0.01)
                tnn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ---- ResNet --------------------------------------------------------------------------------

class BasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, L: _Layers, inplanes: int, planes: int, stride: int = 1,
                 downsample: tnn.Module | None = None):
        super().__init__()
        self.conv1 = L.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = L.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = L.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(tnn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride is on the 3x3 convolution."""
    expansion = 4

    def __init__(self, L: _Layers, inplanes: int, planes: int, stride: int = 1,
                 downsample: tnn.Module | None = None):
        super().__init__()
        self.conv1 = L.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = L.BatchNorm2d(planes)
        self.conv2 = L.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = L.BatchNorm2d(planes)
        self.conv3 = L.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = L.BatchNorm2d(planes * self.expansion)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet(tnn.Module):
    """torchvision.models.ResNet (groups=1, width 64, no zero-init of the last batchnorm)."""

    def __init__(self, block, layers, num_classes: int = 1000, impl: Impl = "dlkern"):
        super().__init__()
        L = _Layers(impl)
        self.inplanes = 64
        self.conv1 = L.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = L.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(L, block, 64, layers[0])
        self.layer2 = self._make_layer(L, block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(L, block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(L, block, 512, layers[3], stride=2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = L.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, tnn.BatchNorm2d):
                tnn.init.constant_(m.weight, 1)
                tnn.init.constant_(m.bias, 0)

    def _make_layer(self, L: _Layers, block, planes: int, blocks: int,
                    stride: int = 1) -> tnn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                L.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                L.BatchNorm2d(planes * block.expansion))
        layers = [block(L, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(L, self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# ---- constructors --------------------------------------------------------------------------

def vgg16(num_classes: int = 1000, impl: Impl = "dlkern") -> VGG:
    return VGG(_VGG_CFGS["vgg16"], False, num_classes, impl=impl)


def vgg16_bn(num_classes: int = 1000, impl: Impl = "dlkern") -> VGG:
    return VGG(_VGG_CFGS["vgg16"], True, num_classes, impl=impl)


def vgg19(num_classes: int = 1000, impl: Impl = "dlkern") -> VGG:
    return VGG(_VGG_CFGS["vgg19"], False, num_classes, impl=impl)


def vgg19_bn(num_classes: int = 1000, impl: Impl = "dlkern") -> VGG:
    return VGG(_VGG_CFGS["vgg19"], True, num_classes, impl=impl)


def resnet18(num_classes: int = 1000, impl: Impl = "dlkern") -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, impl=impl)


def resnet34(num_classes: int = 1000, impl: Impl = "dlkern") -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, impl=impl)


def resnet50(num_classes: int = 1000, impl: Impl = "dlkern") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, impl=impl)


def resnet101(num_classes: int = 1000, impl: Impl = "dlkern") -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, impl=impl)


def resnet152(num_classes: int = 1000, impl: Impl = "dlkern") -> ResNet:
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, impl=impl)


# name -> (constructor, display name as in the seeds' tables, default benchmark batch)
MODELS: dict[str, tuple[Callable[..., tnn.Module], str, int]] = {
    "vgg16": (vgg16, "VGG16", 8),
    "vgg16_bn": (vgg16_bn, "VGG16 BN", 8),
    "vgg19": (vgg19, "VGG19", 8),
    "vgg19_bn": (vgg19_bn, "VGG19 BN", 8),
    "resnet18": (resnet18, "Resnet18", 8),
    "resnet34": (resnet34, "Resnet34", 8),
    "resnet50": (resnet50, "Resnet50", 8),
    "resnet101": (resnet101, "Resnet101", 4),
    "resnet152": (resnet152, "Resnet152", 4),
}


def create(name: str, impl: Impl = "dlkern", num_classes: int = 1000) -> tnn.Module:
    """A model of MODELS by name (case-insensitive; "VGG16 BN", "vgg16-bn" and "vgg16_bn" all
    name the same one)."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in MODELS:
        raise ValueError(f"dlkern.models: unknown model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[key][0](num_classes=num_classes, impl=impl)

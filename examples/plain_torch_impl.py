"""An implementation from outside dlkern, written with plain torch ops: what `--impl` loads.

    python -m bench.layers --impl examples/plain_torch_impl.py:IMPLS,torch --ops softmax,linear
    python -m bench.layers --impl mine=examples/plain_torch_impl.py:softmax,torch --ops softmax
    python -m bench.layers --impl examples/plain_torch_impl.py:factory,torch

`softmax` and `linear` take the registry's keyword arguments (those of torch's reference:
softmax(input, dim), linear(input, weight, bias)); IMPLS maps op names to them; `factory`
(spec, device) picks one per op and refuses the rest with a reason. `wrong_softmax` is off by a
little and the harness's gate refuses it (a FAILED row, exit 1).
"""
import torch

from bench.impls import Unavailable


def softmax(input, dim):
    shifted = input - input.amax(dim=dim, keepdim=True)
    e = shifted.exp()
    return e / e.sum(dim=dim, keepdim=True)


def linear(input, weight, bias=None):
    out = input.matmul(weight.t())
    return out if bias is None else out + bias


IMPLS = {"softmax": softmax, "linear": linear}


def factory(spec, device):
    if spec.name not in IMPLS:
        raise Unavailable(f"plain_torch_impl has no {spec.name} (it has softmax and linear)")
    return IMPLS[spec.name]


def wrong_softmax(input, dim):
    return softmax(input, dim) * (1 + 1e-3)


def not_a_kernel():
    return None


NOT_CALLABLE = 42

"""softmax beyond numerical parity (tests/test_ops.py): the API mirrors torch's, bad input gets a
clear exception, autograd to second order, torch.compile, and the dlkern.nn module."""
import pickle
import warnings

import pytest
import torch

import dlkern
from dlkern import functional as F


def test_matches_torch_signature_and_implicit_dim():
    x = torch.randn(2, 3, 4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = F.softmax(x)
    assert any("Implicit dimension" in str(m.message) for m in w)
    assert torch.allclose(got, torch.softmax(x, 0))  # 3-d -> dim 0, like torch
    assert torch.allclose(F.softmax(x, dim=1), torch.nn.functional.softmax(x, dim=1))
    h = torch.randn(5, 7).half()
    assert F.softmax(h, -1, dtype=torch.float32).dtype == torch.float32


def test_output_shape_and_dtype_of_empty_and_scalar():
    assert F.softmax(torch.empty(0, 5), 1).shape == (0, 5)
    assert F.softmax(torch.tensor(3.0), 0).item() == 1.0
    assert F.softmax(torch.tensor(3.0), -1).shape == ()


@pytest.mark.parametrize("x,dim,exc,words", [
    (torch.randn(3, 4).double(), -1, TypeError, ["dlkern.softmax", "'input'", "float32", "Double"]),
    (torch.arange(6).view(2, 3), -1, TypeError, ["dlkern.softmax", "'input'", "float32", "Long"]),
    (torch.randn(3, 4), 2, IndexError, ["dlkern.softmax", "'dim'", "[-2, 1]", "got 2"]),
    (torch.randn(3, 4), -3, IndexError, ["dlkern.softmax", "'dim'", "got -3"]),
    (torch.tensor(1.0), 1, IndexError, ["dlkern.softmax", "'dim'", "[-1, 0]"]),
])
def test_bad_input_names_op_and_argument(x, dim, exc, words):
    with pytest.raises(exc) as e:
        F.softmax(x, dim)
    for word in words:
        assert word in str(e.value), str(e.value)


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match=r"dlkern.softmax: argument 'dtype' must be None or torch.float32"):
        F.softmax(torch.randn(3), 0, dtype=torch.float64)


def test_backward_op_checks_shapes_and_dtypes():
    y = F.softmax(torch.randn(3, 4), -1)
    with pytest.raises(ValueError, match=r"dlkern.softmax_backward: arguments 'grad_output' and 'output' must have the same shape"):
        torch.ops.dlkern.softmax_backward(torch.randn(3, 5), y, -1)
    with pytest.raises(TypeError, match=r"dlkern.softmax_backward: argument 'grad_output' must be a float32"):
        torch.ops.dlkern.softmax_backward(torch.randn(3, 4).double(), y, -1)


@pytest.mark.parametrize("shape,dim", [((4, 9), -1), ((5, 3, 2), 1), ((), 0), ((7,), 0)])
def test_double_backward_matches_torch(shape, dim, isa):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(shape, generator=g)
    go = torch.randn(shape, generator=g)
    u = torch.randn(shape, generator=g)

    def second_order(fn):
        x = x0.clone().requires_grad_()
        gx, = torch.autograd.grad(fn(x, dim), x, go, create_graph=True)
        ggx, = torch.autograd.grad(gx, x, u)
        return gx.detach(), ggx

    def f64(x, d):
        return torch.softmax(x.double(), d)

    got, ref, exact = second_order(F.softmax), second_order(torch.softmax), second_order(f64)
    for a, r, e in zip(got, ref, exact):
        err, terr = (a.double() - e).abs().max().item(), (r.double() - e).abs().max().item()
        assert err <= 3 * terr + 1e-6 * max(e.abs().max().item(), 1.0), (err, terr)


def test_grad_of_backward_wrt_grad_output_and_output():
    # Both arguments of softmax_backward differentiable: gradcheck on its float32 output is too
    # imprecise, so compare with torch's own double backward formula in float64.
    y = F.softmax(torch.randn(4, 6), -1).requires_grad_()
    g = torch.randn(4, 6, requires_grad=True)
    dx = torch.ops.dlkern.softmax_backward(g, y, -1)
    u = torch.randn(4, 6)
    gg, gy = torch.autograd.grad(dx, (g, y), u)
    y64, g64 = y.detach().double().requires_grad_(), g.detach().double().requires_grad_()
    dx64 = y64 * (g64 - (g64 * y64).sum(-1, keepdim=True))
    gg64, gy64 = torch.autograd.grad(dx64, (g64, y64), u.double())
    assert torch.allclose(gg.double(), gg64, atol=1e-6) and torch.allclose(gy.double(), gy64, atol=1e-5)


def test_no_grad_and_requires_grad_paths_agree():
    x = torch.randn(33, 17)
    with torch.no_grad():
        a = F.softmax(x.requires_grad_(), -1)
    b = F.softmax(x, -1)
    assert a.grad_fn is None and b.grad_fn is not None
    assert torch.equal(a, b.detach())


def test_torch_compile_fullgraph():
    def f(x, w):
        return (F.softmax(x @ w, dim=-1) * 2).sum(0)

    x = torch.randn(8, 16)
    w = torch.randn(16, 32, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, w)
    ref = f(x, w)
    assert torch.allclose(out, ref, atol=1e-6)
    gw, = torch.autograd.grad(out.sum(), w)
    rw, = torch.autograd.grad(ref.sum(), w)
    assert torch.allclose(gw, rw, atol=1e-5)


def test_nn_softmax_is_a_drop_in():
    m, t = dlkern.nn.Softmax(dim=1), torch.nn.Softmax(dim=1)
    assert isinstance(m, torch.nn.Softmax)
    assert repr(m) == repr(t) and m.state_dict().keys() == t.state_dict().keys()
    x = torch.randn(4, 5, 6)
    assert torch.allclose(m(x), t(x), atol=1e-7)
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.dim == 1 and torch.equal(m2(x), m(x))

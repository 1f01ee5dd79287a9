"""dlkern.functional.linear and dlkern.nn.Linear: the API around the kernels (parity over the
registry's edge cases is in test_ops.py): errors, drop-in module, double backward, compile."""
import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern import functional as DF


def _inputs(b=5, i=7, o=3, bias=True, grad=True):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, i, generator=g, requires_grad=grad)
    w = torch.randn(o, i, generator=g, requires_grad=grad)
    bb = torch.randn(o, generator=g, requires_grad=grad) if bias else None
    return x, w, bb


@pytest.mark.parametrize("args, exc, message", [
    (lambda: (torch.randn(4, 5), torch.randn(3, 6), None), ValueError,
     r"dlkern.linear: input and weight shapes cannot be multiplied: input \[4, 5\] has 5 "
     r"in_features, weight \[3, 6\] expects 6"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5, 1), None), ValueError,
     r"dlkern.linear: argument 'weight' must be 2-D \(out_features, in_features\), got shape \[3, 5, 1\]"),
    (lambda: (torch.tensor(1.0), torch.randn(3, 1), None), ValueError,
     r"dlkern.linear: argument 'input' must have at least 1 dimension"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5), torch.randn(4)), ValueError,
     r"dlkern.linear: argument 'bias' must have shape \[3\] \(out_features of weight \[3, 5\]\), got \[4\]"),
    (lambda: (torch.randn(4, 5, dtype=torch.float64), torch.randn(3, 5), None), TypeError,
     r"dlkern.linear: argument 'input' must be a float32 tensor, got Double"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5, dtype=torch.float16), None), TypeError,
     r"dlkern.linear: argument 'weight' must be a float32 tensor, got Half"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5), torch.randn(3, dtype=torch.float64)), TypeError,
     r"dlkern.linear: argument 'bias' must be a float32 tensor"),
    (lambda: (torch.randn(4, 5), torch.randn(3, 5, device="meta"), None), (ValueError, RuntimeError),
     r"dlkern.linear: .*same device|device"),
])
def test_bad_input_raises_naming_op_and_shapes(args, exc, message):
    x, w, b = args()
    with pytest.raises(exc, match=message):
        DF.linear(x, w, b)


def test_matches_torch_for_1d_and_batched_inputs():
    w, b = torch.randn(6, 4), torch.randn(6)
    for shape in [(4,), (3, 4), (2, 3, 4), (2, 1, 3, 4)]:
        x = torch.randn(shape)
        got, want = DF.linear(x, w, b), F.linear(x, w, b)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_only_where_requested():
    x, w, b = _inputs()
    x.requires_grad_(False)
    y = DF.linear(x, w, b)
    gw, gb = torch.autograd.grad(y.sum(), [w, b])
    torch.testing.assert_close(gw, torch.ones(3, 5) @ x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gb, torch.full((3,), 5.0))
    assert y.grad_fn.name() == "DlkernLinearBackward"
    with torch.no_grad():
        assert DF.linear(*_inputs()).grad_fn is None


def test_double_backward_matches_torch():
    x, w, b = (t.double().detach().float().requires_grad_() for t in _inputs())
    def f(fn):
        y = fn(x, w, b)
        gx, gw = torch.autograd.grad((y ** 2).sum(), [x, w], create_graph=True)
        return torch.autograd.grad((gx ** 3).sum() + (gw * gw).sum(), [x, w, b])
    for got, want in zip(f(DF.linear), f(F.linear)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_gradcheck_in_float32_against_finite_differences_of_torch():
    # gradcheck needs float64; dlkern is float32, so compare analytical gradients of both
    x, w, b = _inputs(b=3, i=4, o=2)
    go = torch.randn(3, 2)
    ours = torch.autograd.grad(DF.linear(x, w, b), [x, w, b], go)
    theirs = torch.autograd.grad(F.linear(x, w, b), [x, w, b], go)
    for a, c in zip(ours, theirs):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_nn_linear_is_a_drop_in():
    torch.manual_seed(0)
    ref = torch.nn.Linear(20, 7)
    torch.manual_seed(0)
    mine = dlkern.nn.Linear(20, 7)
    assert isinstance(mine, torch.nn.Linear)
    assert mine.state_dict().keys() == ref.state_dict().keys()
    for k in ref.state_dict():   # same initialisation from the same seed
        assert torch.equal(mine.state_dict()[k], ref.state_dict()[k])
    assert repr(mine) == repr(ref)
    x = torch.randn(9, 20)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)
    nb = dlkern.nn.Linear(20, 7, bias=False)
    assert nb.bias is None and "bias" not in nb.state_dict()
    nb.load_state_dict({"weight": ref.weight.detach()})
    torch.testing.assert_close(nb(x), F.linear(x, ref.weight), rtol=1e-5, atol=1e-5)
    mine.load_state_dict(ref.state_dict())
    mine(x).sum().backward()
    assert mine.weight.grad.shape == (7, 20) and mine.bias.grad.shape == (7,)


def test_torch_compile_fullgraph():
    x, w, b = _inputs()
    f = torch.compile(lambda x, w, b: DF.linear(x, w, b).relu(), fullgraph=True, dynamic=False)
    torch.testing.assert_close(f(x, w, b), F.linear(x, w, b).relu(), rtol=1e-5, atol=1e-5)


def test_reference_and_avx2_paths_agree_closely():
    x, w, b = _inputs(b=33, i=300, o=70, grad=False)
    with dlkern.cpu_isa("reference"):
        r = DF.linear(x, w, b)
    got = DF.linear(x, w, b)
    torch.testing.assert_close(got, r, rtol=1e-5, atol=1e-5)

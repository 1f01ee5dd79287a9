"""dlkern.functional.batch_norm and dlkern.nn.BatchNorm*d: API, errors, module bookkeeping
(parity over the registry's edge cases, both ISA paths and thread counts is in test_ops.py)."""
import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern import functional as DF


def _stats(c):
    return torch.zeros(c), torch.ones(c)


@pytest.mark.parametrize("call, exc, message", [
    (lambda: DF.batch_norm(torch.randn(4, 3, 5), torch.zeros(4), torch.ones(4), training=True),
     ValueError, r"dlkern.batch_norm: argument 'running_mean' must have shape \[3\] \(the channels "
                 r"of input \[4, 3, 5\]\), got \[4\]"),
    (lambda: DF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(2)), ValueError,
     r"argument 'running_var' must have shape \[3\]"),
    (lambda: DF.batch_norm(torch.randn(4, 3), *_stats(3), weight=torch.ones(2)), ValueError,
     r"argument 'weight' must have shape \[3\]"),
    (lambda: DF.batch_norm(torch.randn(7), *_stats(7)), ValueError,
     r"dlkern.batch_norm: argument 'input' must be \(N, C\), \(N, C, L\), \(N, C, H, W\) or "
     r"\(N, C, D, H, W\), got shape \[7\]"),
    (lambda: DF.batch_norm(torch.randn(1, 2, 1, 1, 1, 1), *_stats(2)), ValueError,
     r"argument 'input' must be \(N, C\)"),
    (lambda: DF.batch_norm(torch.randn(1, 3, 1, 1), *_stats(3), training=True), ValueError,
     r"dlkern.batch_norm: expected more than 1 value per channel when training, got input size "
     r"\(1, 3, 1, 1\)"),
    (lambda: DF.batch_norm(torch.randn(4, 3), None, None, training=False), ValueError,
     r"dlkern.batch_norm: running_mean and running_var must be given in evaluation mode"),
    (lambda: DF.batch_norm(torch.randn(4, 3, dtype=torch.float64), *_stats(3)), TypeError,
     r"dlkern.batch_norm: argument 'input' must be a float32 tensor, got Double"),
    (lambda: DF.batch_norm(torch.randn(4, 3), *_stats(3), momentum=None, training=True),
     TypeError, r"dlkern.batch_norm: argument 'momentum' must be a float"),
    # updated in place: a stride-0 view cannot hold three different values (torch writes one)
    (lambda: DF.batch_norm(torch.randn(4, 3), torch.zeros(1).expand(3), torch.ones(3),
                           training=True), ValueError,
     r"dlkern.batch_norm: argument 'running_mean' is updated in place in training, but its "
     r"elements share memory"),
    (lambda: DF.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(1).expand(3),
                           training=True), ValueError, r"argument 'running_var' is updated in place"),
])
def test_bad_input_raises_naming_the_op(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


@pytest.mark.parametrize("cls, shape", [("BatchNorm1d", (6, 4)), ("BatchNorm1d", (6, 4, 9)),
                                        ("BatchNorm2d", (3, 4, 5, 7)),
                                        ("BatchNorm3d", (2, 4, 3, 5, 2))])
@pytest.mark.parametrize("momentum", [0.1, None, 1.0, 0.0])
def test_modules_track_stats_like_torch(cls, shape, momentum):
    torch.manual_seed(0)
    ref = getattr(torch.nn, cls)(4, momentum=momentum)
    mine = getattr(dlkern.nn, cls)(4, momentum=momentum)
    assert isinstance(mine, getattr(torch.nn, cls)) and repr(mine) == repr(ref)
    assert mine.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        for m in (ref, mine):
            m.weight.copy_(torch.linspace(0.5, 1.5, 4))
            m.bias.copy_(torch.linspace(-1, 1, 4))
    for step in range(3):   # training steps: outputs, gradients, running stats, batch count
        x = torch.randn(shape) * 3 + step
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ref(xa), mine(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
        go = torch.randn(shape)
        ga = torch.autograd.grad(ya, [xa, ref.weight, ref.bias], go)
        gb = torch.autograd.grad(yb, [xb, mine.weight, mine.bias], go)
        for a, b in zip(ga, gb):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        for k in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(mine.state_dict()[k], ref.state_dict()[k], rtol=1e-5,
                                       atol=1e-6)
    ref.eval()
    mine.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("affine, track", [(False, True), (True, False), (False, False)])
def test_module_options(affine, track):
    torch.manual_seed(0)
    ref = torch.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    mine = dlkern.nn.BatchNorm2d(3, affine=affine, track_running_stats=track)
    assert mine.state_dict().keys() == ref.state_dict().keys()
    x = torch.randn(4, 3, 5, 5)
    for mode in ("train", "eval"):
        getattr(ref, mode)()
        getattr(mine, mode)()
        torch.testing.assert_close(mine(x), ref(x), rtol=1e-5, atol=1e-5)


def test_running_stats_update_bumps_version_and_needs_no_grad():
    rm, rv = _stats(3)
    v = rm._version
    DF.batch_norm(torch.randn(4, 3, 2), rm, rv, training=True)
    assert rm._version > v and not torch.equal(rm, torch.zeros(3))
    v = rm._version
    DF.batch_norm(torch.randn(4, 3, 2), rm, rv, training=False)   # eval: stats untouched
    assert rm._version == v


def test_non_contiguous_running_stats_are_updated():
    base_m, base_v = torch.zeros(3, 2), torch.ones(3, 2)
    rm, rv = base_m[:, 0], base_v[:, 0]       # strided views
    x = torch.randn(5, 3, 4)
    em, ev = torch.zeros(3), torch.ones(3)
    F.batch_norm(x, em, ev, training=True)
    DF.batch_norm(x, rm, rv, training=True)
    torch.testing.assert_close(base_m[:, 0], em)
    torch.testing.assert_close(base_v[:, 0], ev)
    assert torch.equal(base_m[:, 1], torch.zeros(3))


def test_channels_last_input_gives_the_same_values():
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    got = DF.batch_norm(x, *_stats(5), w, b, training=True)
    want = F.batch_norm(x, *_stats(5), w, b, training=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_double_backward_is_refused_clearly():
    x = torch.randn(4, 3, 2, requires_grad=True)
    y = DF.batch_norm(x, *_stats(3), training=True)
    with pytest.raises(NotImplementedError, match="dlkern.batch_norm: double backward"):
        torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    gx, = torch.autograd.grad((y ** 2).sum(), x)     # first order is unaffected
    assert gx.shape == x.shape


def test_opcheck():
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    w = torch.rand(3, requires_grad=True)
    b = torch.randn(3, requires_grad=True)
    for training in (True, False):
        torch.library.opcheck(torch.ops.dlkern.batch_norm.default,
                              (x, w, b, torch.zeros(3), torch.ones(3), training, 0.1, 1e-5))

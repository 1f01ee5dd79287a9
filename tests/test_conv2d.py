"""dlkern.functional.conv2d and dlkern.nn.Conv2d: the full option grid against torch and float64
(registry rule), errors, the drop-in module with every padding mode, compile and opcheck. The
registry's edge cases (test_ops.py) add both ISA paths, three seeds and 1 vs 2 threads."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern import functional as DF
from dlkern import registry, testing
from dlkern.ops.conv2d import algorithm, preference
from dlkern.registry import Case

SPEC = registry.get("conv2d")

GRID = []
for k, stride, pad, dil in itertools.product((1, 2, 3, 5, 7), (1, 2, 3), (0, 1, 2, 3, "same"),
                                             (1, 2)):
    if pad == "same" and stride != 1:
        continue
    span = dil * (k - 1) + 1
    if pad != "same" and 13 + 2 * pad < span:
        continue
    GRID.append(pytest.param({"shape": (2, 3, 13, 13), "out": 4, "kernel": k, "stride": stride,
                              "padding": pad, "dilation": dil},
                             id=f"k{k}-s{stride}-p{pad}-d{dil}"))


@pytest.mark.parametrize("params", GRID)
def test_option_grid_matches_torch_and_float64(params):
    for v in testing.check(SPEC, Case("grid", params), "cpu", seed=0):
        assert v.ok, str(v)


@pytest.mark.parametrize("groups,channels,out", [(1, 4, 6), (2, 4, 6), (4, 4, 4), (4, 4, 8),
                                                 (3, 6, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_groups_match_torch(groups, channels, out, stride):
    params = {"shape": (2, channels, 11, 11), "out": out, "kernel": 3, "stride": stride,
              "padding": 1, "groups": groups}
    for v in testing.check(SPEC, Case("groups", params), "cpu", seed=1):
        assert v.ok, str(v)


@pytest.mark.parametrize("args,expected", [
    (((1, 64, 7, 7), (32, 64, 1, 1), 1, 0, 1, 1), "gemm1x1"),
    (((1, 64, 7, 7), (32, 64, 1, 1), 2, 0, 1, 1), "im2col"),
    (((1, 64, 7, 7), (32, 64, 3, 3), 1, 1, 1, 1), "im2col"),
    (((1, 8, 7, 7), (8, 1, 3, 3), 1, 1, 1, 8), "depthwise"),
    (((1, 8, 7, 7), (16, 1, 3, 3), 2, 1, 1, 8), "depthwise"),
    (((1, 8, 7, 7), (8, 4, 3, 3), 1, 1, 1, 2), "im2col"),
    (((8, 64, 28, 28), (64, 64, 3, 3), 1, 1, 1, 1), "winograd"),
    (((8, 64, 28, 28), (64, 64, 3, 3), 1, 0, 1, 1), "winograd"),
    (((8, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1), "winograd"),
    (((2, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1), "im2col"),   # too few tiles
    (((8, 64, 28, 28), (64, 64, 3, 3), 2, 1, 1, 1), "im2col"),    # stride 2
    (((8, 64, 28, 28), (64, 64, 3, 3), 1, 2, 2, 1), "im2col"),    # dilation 2
    (((8, 64, 28, 28), (64, 32, 3, 3), 1, 1, 1, 2), "im2col"),    # groups: only when asked
    (((8, 16, 28, 28), (16, 16, 3, 3), 1, 1, 1, 1), "im2col"),    # few channels
])
def test_algorithm_choice(args, expected):
    xs, ws, stride, padding, dilation, groups = args
    assert algorithm(torch.empty(xs), torch.empty(ws), stride, padding, dilation, groups) == expected


def test_preference_moves_the_choice_and_is_restored():
    x, w = torch.empty(1, 3, 7, 7), torch.empty(4, 3, 3, 3)
    big_x, big_w = torch.empty(8, 64, 28, 28), torch.empty(64, 64, 3, 3)
    assert algorithm(x, w, 1, 1) == "im2col" and algorithm(big_x, big_w, 1, 1) == "winograd"
    with preference("winograd"):
        assert algorithm(x, w, 1, 1) == "winograd"
        assert algorithm(x, w, 2, 1) == "im2col"    # where it does not apply, nothing changes
        with preference("gemm"):
            assert algorithm(big_x, big_w, 1, 1) == "im2col"
        assert algorithm(big_x, big_w, 1, 1) == "winograd"
    assert algorithm(x, w, 1, 1) == "im2col"
    with pytest.raises(ValueError, match=r"dlkern.conv2d preference: argument 'name' must be one "
                                         r"of 'auto', 'winograd', 'gemm', got 'fft'"):
        with preference("fft"):
            pass
    assert set(SPEC.variants) >= {"winograd", "gemm"}


def _winograd_cases():
    out = []
    for case in SPEC.edge_cases:
        kw = SPEC.make_inputs(case.params, "cpu", 0).kwargs
        with preference("winograd"):
            name = algorithm(kw["input"], kw["weight"], kw["stride"], kw["padding"],
                             kw["dilation"], kw["groups"])
        if name == "winograd" and kw["input"].numel():
            out.append(pytest.param(case, id=case.name))
    return out


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
@pytest.mark.parametrize("case", _winograd_cases())
def test_winograd_on_every_edge_case_it_applies_to(isa, case):
    # forward, backward data and weight by Winograd, whatever the rule would pick: odd sizes,
    # every padding, one channel, NaN and inf inputs (which it hands back to im2col)
    if isa not in registry.cpu_variants():
        pytest.skip(f"this CPU cannot run the {isa} path")
    before = torch.ops.dlkern._conv2d_winograd_passes()
    with dlkern.cpu_isa(isa), preference("winograd"):
        for v in testing.check(SPEC, case, "cpu", seed=0):
            assert v.ok, f"{case.name} ({isa}): {v}"
    served = torch.ops.dlkern._conv2d_winograd_passes() - before
    if case.params.get("kind", "normal") in ("normal", "hard"):
        # forward, backward data and weight, each run at least once by the check (a fallback
        # to im2col would pass the comparison unseen)
        assert served >= 3, f"{case.name} ({isa}): Winograd served {served} passes"


def test_winograd_edge_cases_cover_the_class():
    names = [p.id for p in _winograd_cases()]
    assert len(names) >= 15 and any("nan" in n for n in names) and any("inf" in n for n in names)


@pytest.mark.parametrize("make, exc, message", [
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(4, 2, 3, 3), {}), ValueError,
     r"dlkern.conv2d: input has 3 channels but weight \[4, 2, 3, 3\] with groups=1 expects 2"),
    (lambda: (torch.randn(1, 6, 8, 8), torch.randn(4, 3, 3, 3), {"groups": 4}), ValueError,
     r"dlkern.conv2d: groups=4 must divide the input's 6 channels"),
    (lambda: (torch.randn(1, 6, 8, 8), torch.randn(5, 3, 3, 3), {"groups": 2}), ValueError,
     r"dlkern.conv2d: groups=2 must divide the weight's 5 output channels"),
    (lambda: (torch.randn(1, 3, 4, 4), torch.randn(2, 3, 7, 7), {"padding": 1}), ValueError,
     r"dlkern.conv2d: the padded input \(6 x 6\) is smaller than the dilated kernel \(7 x 7\)"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"padding": -1}), ValueError,
     r"dlkern.conv2d: argument 'padding' must be non-negative, got -1"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"padding": (1, -2)}), ValueError,
     r"dlkern.conv2d: argument 'padding' must be non-negative, got \(1, -2\)"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"stride": 0}), ValueError,
     r"dlkern.conv2d: argument 'stride' must be positive, got 0"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"dilation": (1, 2, 3)}), TypeError,
     r"dlkern.conv2d: argument 'dilation' must be an int or a pair of ints"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"groups": 0}), ValueError,
     r"dlkern.conv2d: argument 'groups' must be a positive int, got 0"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"padding": "full"}), ValueError,
     r"dlkern.conv2d: argument 'padding' must be 'same', 'valid'"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"padding": "same", "stride": 2}),
     ValueError, r"dlkern.conv2d: padding='same' needs stride 1"),
    (lambda: (torch.randn(3, 8), torch.randn(2, 3, 3, 3), {}), ValueError,
     r"dlkern.conv2d: argument 'input' must be 3-D \(C, H, W\) or 4-D \(N, C, H, W\), got shape \(3, 8\)"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3), {}), ValueError,
     r"dlkern.conv2d: argument 'weight' must be 4-D"),
    (lambda: (torch.randn(1, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 3, 3), {}), TypeError,
     r"dlkern.conv2d: argument 'input' must be a float32 tensor, got Double"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3, dtype=torch.float16), {}), TypeError,
     r"dlkern.conv2d: argument 'weight' must be a float32 tensor, got Half"),
    (lambda: (torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3), {"bias": torch.randn(3)}), ValueError,
     r"dlkern.conv2d: argument 'bias' must have shape \[2\] \(out_channels of weight \[2, 3, 3, 3\]\), got \[3\]"),
])
def test_bad_input_raises_naming_op_and_values(make, exc, message):
    x, w, kw = make()
    with pytest.raises(exc, match=message):
        DF.conv2d(x, w, **kw)


def test_unbatched_input_and_empty_batch():
    w, b = torch.randn(5, 3, 3, 3), torch.randn(5)
    x = torch.randn(3, 9, 11)
    got, want = DF.conv2d(x, w, b, padding=1), F.conv2d(x, w, b, padding=1)
    assert got.shape == want.shape == (5, 9, 11)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    x0 = torch.randn(0, 3, 9, 11, requires_grad=True)
    w0 = w.clone().requires_grad_()
    y0 = DF.conv2d(x0, w0, b, padding=1)
    assert y0.shape == (0, 5, 9, 11)
    gx, gw = torch.autograd.grad(y0.sum(), [x0, w0])
    assert gx.shape == x0.shape and torch.count_nonzero(gw) == 0


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same", "valid"])
def test_module_is_a_drop_in(padding_mode, padding):
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(4, 6, (3, 5), stride=1, padding=padding, dilation=1, groups=2,
                          padding_mode=padding_mode)
    torch.manual_seed(3)
    mod = dlkern.nn.Conv2d(4, 6, (3, 5), stride=1, padding=padding, dilation=1, groups=2,
                           padding_mode=padding_mode)
    assert isinstance(mod, torch.nn.Conv2d) and repr(mod) == repr(ref)
    assert list(mod.state_dict()) == list(ref.state_dict())
    for a, b in zip(mod.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)   # same initialisation from the same seed
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 10, 12)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = mod(x1), ref(x2)
    torch.testing.assert_close(y1, y2, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y1)
    grads1 = torch.autograd.grad(y1, [x1, mod.weight, mod.bias], g)
    grads2 = torch.autograd.grad(y2, [x2, ref.weight, ref.bias], g)
    for a, b in zip(grads1, grads2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_module_strided_dilated_no_bias():
    torch.manual_seed(0)
    ref = torch.nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, bias=False)
    mod = dlkern.nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, bias=False)
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 17, 15)
    torch.testing.assert_close(mod(x), ref(x), rtol=1e-5, atol=1e-5)


def test_gradients_only_where_requested():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4)
    y = DF.conv2d(x, w, b, padding=1)
    (gw,) = torch.autograd.grad(y.sum(), [w])
    torch.testing.assert_close(gw, torch.autograd.grad(F.conv2d(x, w, b, padding=1).sum(), [w])[0],
                               rtol=1e-4, atol=1e-4)
    assert DF.conv2d(x, w.detach(), b).grad_fn is None


def test_double_backward_is_refused_clearly():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y = DF.conv2d(x, w)
    with pytest.raises(NotImplementedError, match="dlkern.conv2d: double backward"):
        torch.autograd.grad(y.sum(), [x], create_graph=True)


def test_opcheck():
    x, w, b = torch.randn(2, 3, 7, 8), torch.randn(4, 3, 3, 3), torch.randn(4)
    torch.library.opcheck(torch.ops.dlkern.conv2d.default, (x, w, b, [1, 2], [1, 0, 2, 1], [1, 1], 1))
    x, w = torch.randn(2, 4, 7, 8), torch.randn(6, 2, 1, 1)
    torch.library.opcheck(torch.ops.dlkern.conv2d.default, (x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 2))


def test_compiles_fullgraph():
    mod = dlkern.nn.Conv2d(3, 5, 3, padding="same")
    x = torch.randn(2, 3, 9, 9)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), mod(x))


ISAS = [i for i in ("avx2", "avx512")
        if (i, dlkern.capabilities()["cpu_isa_best"]) != ("avx512", "avx2")
        and dlkern.capabilities()["cpu_isa_best"] != "reference"]


@pytest.mark.parametrize("pref", ["auto", "winograd"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("stride,groups,channels", [(1, 1, 16), (1, 1, 4), (2, 2, 8), (1, 2, 8),
                                                    (1, 8, 8), (2, 8, 8), (2, 1, 4)])
def test_infinite_weight_gives_no_nan_in_grad_input(isa, stride, groups, channels, pref):
    # backward data as a convolution over a zero-padded dY (the transposed convolution, the
    # direct grouped and depthwise routes) would multiply the padding by the weight: 0 * inf
    # = NaN where torch's sum of real products gives an infinity or a finite value
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, channels, 12, 12, generator=g, requires_grad=True)
    w = torch.randn(8, channels // groups, 3, 3, generator=g)
    w.view(-1)[0] = float("inf")
    w.requires_grad_(True)
    dy = torch.randn(2, 8, (12 - 1) // stride + 1, (12 - 1) // stride + 1, generator=g)
    want = torch.autograd.grad(F.conv2d(x, w, None, stride, 1, 1, groups), x, dy)[0]
    with dlkern.cpu_isa(isa), preference(pref):
        got = torch.autograd.grad(DF.conv2d(x, w, None, stride, 1, 1, groups), x, dy)[0]
    assert not want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    finite = want.isfinite()
    torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)

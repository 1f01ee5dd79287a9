"""CUDA parity: every op and every edge case of the registry on the GPU, against torch (cuBLAS /
cuDNN, TF32 off) in float32 and a float64 reference, by the same rule as the CPU tests; plus the
CUDA-only contracts (determinism, device mismatches, the current stream). Every test here skips
with the reason when no GPU is visible or dlkern was built without its CUDA kernels."""
import pytest
import torch
import torch.nn.functional as F

import dlkern
from dlkern import registry, testing


def _skip_reason():
    if not torch.cuda.is_available():
        return (f"no CUDA GPU visible (torch {torch.__version__}: torch.cuda.is_available() is "
                "False); the CUDA build is checked by .ci/cuda-build-check, the kernels run on a GPU "
                "through .ci/gpu-session (docs/cuda.md)")
    if not dlkern.capabilities()["cuda_built"]:
        return ("dlkern was built without its CUDA kernels; rebuild with a CUDA torch and nvcc: "
                "pip install -e .")
    return None


REASON = _skip_reason()
if REASON is not None:  # one skip line for the module rather than one per parametrized case
    pytest.skip(REASON, allow_module_level=True)

SEEDS = (0, 1)
CASES = [pytest.param(spec, case, id=f"{spec.name}[{case.name}]")
         for spec in registry.ops() for case in spec.edge_cases]


@pytest.fixture(autouse=True)
def fp32_torch():
    """torch's references in true float32: cuDNN convolutions default to TF32 on Ampere and
    later, whose error would loosen the tolerance the rule derives from torch's own error."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("spec,case", CASES)
def test_parity_cuda(spec, case):
    assert "cuda" in spec.devices, f"{spec.name}: registry lists no CUDA kernel in a CUDA build"
    for seed in SEEDS:
        for v in testing.check(spec, case, "cuda", seed):
            assert v.ok, f"{spec.name} {case.name} seed {seed} (cuda): {v}"


@pytest.mark.parametrize("spec,case", CASES)
def test_every_argument_in_every_layout_cuda(spec, case):
    for plan in testing.layout_plans(spec, case, "cuda"):
        for v in testing.check(spec, case, "cuda", 0, layouts=plan):
            assert v.ok, f"{spec.name} {case.name} {plan} (cuda): {v}"


@pytest.mark.parametrize("spec", registry.ops(), ids=lambda s: s.name)
def test_bench_cases_cuda(spec):
    """The benchmark shapes themselves (large tiles, split-K, many slices) pass the same check."""
    for case in spec.bench_cases[:6]:
        for v in testing.check(spec, case, "cuda", 0):
            assert v.ok, f"{spec.name} {case.name} (cuda): {v}"


def _call_on(stream, spec, kw, inputs):
    """The op's output and the gradients of its differentiable inputs, queued on `stream`."""
    with torch.cuda.stream(stream):
        out = spec.fn(**kw)
        grads = []
        if inputs.grad and out.numel():
            grads = torch.autograd.grad(out, [kw[n] for n in inputs.grad], torch.ones_like(out))
    return [out.detach(), *grads]


def _outputs(spec, case):
    inputs = spec.make_inputs(case.params, "cuda", 0)
    return _call_on(torch.cuda.current_stream(), spec, testing.leaf_kwargs(inputs), inputs)


@pytest.mark.parametrize("spec,case", CASES)
def test_cuda_is_deterministic(spec, case):
    """No atomics: two runs give the same bits (split-K and the batchnorm slices are summed in a
    fixed order)."""
    a, b = _outputs(spec, case), _outputs(spec, case)
    for x, y in zip(a, b):
        assert torch.equal(torch.nan_to_num(x, 7.0), torch.nan_to_num(y, 7.0)), \
            f"{spec.name} {case.name}: two CUDA runs differ"


def test_mixed_devices_are_refused():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(ValueError, match="dlkern.linear: arguments 'input' and 'weight' must be on the same device"):
        dlkern.functional.linear(x, torch.randn(3, 8))
    with pytest.raises(ValueError, match="dlkern.conv2d: arguments 'input' and 'weight'"):
        dlkern.functional.conv2d(torch.randn(1, 2, 5, 5, device="cuda"), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="dlkern.batch_norm: arguments 'input' and 'weight'"):
        dlkern.functional.batch_norm(torch.randn(2, 3, 4, device="cuda"), None, None,
                                     torch.ones(3), None, training=True)


def _stream_cases():
    """Every edge case (they reach every kernel path: row and column softmax, eval batchnorm,
    1x1 and depthwise convolutions, ...) and each op's first benchmark shape."""
    return CASES + [pytest.param(spec, spec.bench_cases[0], id=f"{spec.name}[{spec.bench_cases[0].name}]")
                    for spec in registry.ops()]


@pytest.mark.parametrize("spec,case", _stream_cases())
def test_runs_on_the_current_stream(spec, case):
    """Kernels, forward and backward, are queued on torch's current stream. Here a side stream
    writes the inputs only after a long sleep (they hold NaN until then), so a kernel queued on
    any other stream (the legacy default one, say) would read NaN, or half-written inputs, and
    its result would differ from the same call made with nothing pending."""
    expected = _outputs(spec, case)
    inputs = spec.make_inputs(case.params, "cuda", 0)
    kw = testing.leaf_kwargs(inputs)
    # every floating-point tensor argument that can be written (a stride-0 view cannot)
    tensors = [v for v in kw.values() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and v.numel() and 0 not in [st for st, n in zip(v.stride(), v.shape) if n > 1]]
    sources = [t.detach().clone() for t in tensors]
    side = torch.cuda.Stream()
    _call_on(side, spec, kw, inputs)  # once first: the allocator's first cudaMalloc syncs
    torch.cuda.synchronize()
    with torch.no_grad():
        for t in tensors:
            t.fill_(float("nan"))
    torch.cuda.synchronize()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the inputs exist
        with torch.no_grad():
            for t, src in zip(tensors, sources):
                t.copy_(src)
    got = _call_on(side, spec, kw, inputs)
    side.synchronize()
    for g, want in zip(got, expected):
        assert torch.equal(torch.nan_to_num(g, 7.0), torch.nan_to_num(want, 7.0)), \
            f"{spec.name} {case.name}: differs on a busy side stream"


def test_nn_modules_on_cuda():
    torch.manual_seed(0)
    conv, bn = dlkern.nn.Conv2d(3, 8, 3, padding=1).cuda(), dlkern.nn.BatchNorm2d(8).cuda()
    ref_conv, ref_bn = torch.nn.Conv2d(3, 8, 3, padding=1).cuda(), torch.nn.BatchNorm2d(8).cuda()
    ref_conv.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 17, 17, device="cuda")
    torch.testing.assert_close(bn(conv(x)), ref_bn(ref_conv(x)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=1e-5, atol=1e-6)

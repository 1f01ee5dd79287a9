"""Registry-driven parity: every op, every edge case, every CPU path, several seeds, against
torch float32 and a float64 reference (dlkern.testing holds the rule). New ops are picked up
from the registry without edits here."""
import pytest
import torch

import dlkern
from dlkern import registry, testing

SEEDS = (0, 1, 2)
CASES = [pytest.param(spec, case, id=f"{spec.name}[{case.name}]")
         for spec in registry.ops() for case in spec.edge_cases]


@pytest.mark.parametrize("spec,case", CASES)
def test_parity(spec, case, isa):
    for seed in SEEDS:
        for v in testing.check(spec, case, "cpu", seed):
            assert v.ok, f"{spec.name} {case.name} seed {seed} ({isa}): {v}"


def _outputs(spec, case, seed=0):
    inputs = spec.make_inputs(case.params, "cpu", seed)
    kw = testing.leaf_kwargs(inputs)
    out = spec.fn(**kw)
    grads = []
    if inputs.grad and out.numel():
        go = torch.ones_like(out).mul_(0.5).add_(torch.arange(out.numel()).view(out.shape) % 7)
        grads = torch.autograd.grad(out, [kw[n] for n in inputs.grad], go)
    return [out.detach(), *grads]


@pytest.mark.parametrize("spec,case", CASES)
def test_threads_do_not_change_results(spec, case, isa, threads):
    torch.set_num_threads(1)
    one = _outputs(spec, case)
    torch.set_num_threads(2)
    two = _outputs(spec, case)
    for a, b in zip(one, two):
        assert torch.equal(torch.nan_to_num(a, 7.0), torch.nan_to_num(b, 7.0)), \
            f"{spec.name} {case.name}: 1 and 2 threads differ"


def test_every_op_has_bench_and_edge_cases():
    for spec in registry.ops():
        assert spec.edge_cases and spec.bench_cases, spec.name
        for case in spec.bench_cases:
            f, b = spec.flops(case.params), spec.bytes(case.params)
            assert f["forward"] > 0 and b["forward"] > 0, (spec.name, case.name)


# composites (multihead_attention) are Python over other ops: no torch.ops.dlkern op of their own
OPCHECK = [pytest.param(spec, case, id=f"{spec.name}[{case.name}]")
           for spec in registry.ops() if not spec.mutates and hasattr(torch.ops.dlkern, spec.name)
           for case in spec.edge_cases
           if any(s in case.name for s in ("0-d dim=0", "5x33 hard", "2x3x5 dim=1", "transposed",
                                           "batch dims", "5x37 -> 19 weight_t", "1-d input"))]


@pytest.mark.parametrize("spec,case", OPCHECK)
def test_opcheck(spec, case):
    """torch.library.opcheck: schema, autograd registration, fake kernel, AOT dispatch."""
    inputs = spec.make_inputs(case.params, "cpu", 0)
    kw = testing.leaf_kwargs(inputs)
    op = getattr(torch.ops.dlkern, spec.name).default
    # The op's schema is positional in the order the generator lists the arguments.
    torch.library.opcheck(op, tuple(kw.values()))


def _wrong_kernels(spec):
    def off_by_one_percent(**kw):
        return spec.fn(**kw) * 1.01

    def zeros(**kw):
        return spec.fn(**kw) * 0

    def drops_nan(**kw):
        return torch.nan_to_num(spec.fn(**kw), nan=0.0)

    def mutates_input(**kw):
        out = spec.fn(**kw)
        with torch.no_grad():
            next(v for v in kw.values() if isinstance(v, torch.Tensor)).add_(1.0)
        return out

    def wrong_gradient(**kw):
        out = spec.fn(**kw)
        return out + (out - out.detach()) * 0.02   # same values, gradient scaled by 1.02

    return [off_by_one_percent, zeros, drops_nan, mutates_input, wrong_gradient]


@pytest.mark.parametrize("spec", registry.ops(), ids=lambda s: s.name)
def test_check_refuses_wrong_kernels(spec):
    """The parity check itself must be able to fail: deliberately wrong implementations of each
    op are refused on at least one of its edge cases."""
    for bad in _wrong_kernels(spec):
        refused = any(not v.ok for case in spec.edge_cases for v in testing.check(spec, case, fn=bad))
        assert refused, f"{spec.name}: the check accepted {bad.__name__}"

"""Correctness checks shared by tests/ and bench/: run dlkern's op, torch in float32 and torch in
float64 on the same inputs, forward and every gradient, and judge the errors by the registry's
tolerance rule. Nothing here times anything."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .registry import Case, Inputs, OpSpec, Tolerance


@dataclass
class Verdict:
    what: str              # "forward" or "grad[<input name>]"
    ok: bool
    err: float             # max |dlkern - float64|
    torch_err: float       # max |torch float32 - float64|
    bound: float
    rel_l2: float          # ||dlkern - float64|| / ||float64||
    torch_rel_l2: float
    detail: str = ""

    def __str__(self):
        return (f"{self.what}: {'ok' if self.ok else 'FAILED'} err {self.err:.3g} "
                f"(torch {self.torch_err:.3g}, bound {self.bound:.3g}), rel-L2 {self.rel_l2:.3g} "
                f"(torch {self.torch_rel_l2:.3g}){' ' + self.detail if self.detail else ''}")


def leaf_kwargs(inputs: Inputs) -> dict:
    """The generator's arguments as fresh autograd leaves: tensors detached (layout and strides
    kept, storage shared), those named in `inputs.grad` requiring grad."""
    return {k: (v.detach().requires_grad_(k in inputs.grad) if isinstance(v, torch.Tensor) else v)
            for k, v in inputs.kwargs.items()}


def _to(inputs: Inputs, dtype) -> dict:
    out = {}
    for k, v in inputs.kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            t = v.detach().to(dtype)
            if k in inputs.grad:
                t.requires_grad_(True)
            out[k] = t
        else:
            out[k] = v
    return out


def _run(fn, kwargs: dict, grad_names, grad_out_seed: int):
    out = fn(**kwargs)
    grads = {}
    if grad_names:
        g = torch.Generator(device="cpu").manual_seed(grad_out_seed)
        go = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
        wrt = [kwargs[n] for n in grad_names]
        gs = torch.autograd.grad(out, wrt, go, allow_unused=True)
        grads = {n: gr for n, gr in zip(grad_names, gs)}
    return out.detach(), grads


def _judge(what: str, got, f32, f64, tol: Tolerance) -> Verdict:
    got, f32, f64 = got.double().cpu(), f32.double().cpu(), f64.double().cpu()
    if got.shape != f64.shape:
        return Verdict(what, False, float("inf"), 0.0, 0.0, float("inf"), 0.0,
                       f"shape {tuple(got.shape)} != {tuple(f64.shape)}")
    # NaN must appear exactly where torch puts it (in float32 and float64 alike).
    nan_got, nan_ref = torch.isnan(got), torch.isnan(f32) | torch.isnan(f64)
    if not torch.equal(nan_got, nan_ref):
        idx = (nan_got != nan_ref).nonzero()[0].tolist()
        return Verdict(what, False, float("nan"), 0.0, 0.0, float("nan"), 0.0,
                       f"NaN mismatch at {idx}: dlkern {got[tuple(idx)].item()}, "
                       f"torch {f32[tuple(idx)].item()}")
    keep = ~nan_ref
    # Infinities must match exactly too; compare errors on the finite rest.
    inf_ref = torch.isinf(f64) & keep
    if not torch.equal(got[inf_ref], f64[inf_ref]):
        return Verdict(what, False, float("inf"), 0.0, 0.0, float("inf"), 0.0, "inf mismatch")
    keep &= ~inf_ref
    g, t, r = got[keep], f32[keep], f64[keep]
    if r.numel() == 0:
        return Verdict(what, True, 0.0, 0.0, 0.0, 0.0, 0.0)
    err = (g - r).abs()
    terr = (t - r).abs()
    scale = r.abs().max().item()
    bound = tol.k * terr.max().item() + tol.floor * scale
    rnorm = r.norm().item() or 1.0
    rel, trel = (g - r).norm().item() / rnorm, (t - r).norm().item() / rnorm
    rel_bound = tol.k * trel + tol.floor
    ok = err.max().item() <= bound and rel <= rel_bound
    detail = ""
    if not ok:
        i = int(err.argmax())
        flat = keep.nonzero()[i].tolist()
        detail = (f"worst at {flat}: dlkern {g[i].item():.9g}, float64 {r[i].item():.9g}, "
                  f"torch {t[i].item():.9g}")
    return Verdict(what, ok, err.max().item(), terr.max().item(), bound, rel, trel, detail)


def check(spec: OpSpec, case: Case, device: str = "cpu", seed: int = 0,
          fn=None) -> list[Verdict]:
    """Forward and every gradient of `fn` (default: the op's dlkern function) against torch in
    float32 and float64 on one seeded input of `case`. Also verifies the inputs were not written."""
    fn = fn or spec.fn
    inputs = spec.make_inputs(case.params, device, seed)
    snapshot = {k: v.clone() for k, v in inputs.kwargs.items() if isinstance(v, torch.Tensor)}
    kw32 = _to(inputs, torch.float32)
    # dlkern gets the generator's tensors themselves (layout and strides as made), with grads.
    out, grads = _run(fn, leaf_kwargs(inputs), inputs.grad, seed + 1000)
    out32, grads32 = _run(spec.ref, kw32, inputs.grad, seed + 1000)
    out64, grads64 = _run(spec.ref, _to(inputs, torch.float64), inputs.grad, seed + 1000)
    verdicts = [_judge("forward", out, out32, out64, spec.tol_forward)]
    for n in inputs.grad:
        verdicts.append(_judge(f"grad[{n}]", grads[n], grads32[n], grads64[n], spec.tol_backward))
    for k, before in snapshot.items():
        if not torch.equal(torch.nan_to_num(before), torch.nan_to_num(inputs.kwargs[k].detach())):
            verdicts.append(Verdict(f"input[{k}]", False, 0, 0, 0, 0, 0, "the op wrote its input"))
    return verdicts

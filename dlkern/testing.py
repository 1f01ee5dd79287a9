"""Correctness checks shared by tests/ and bench/: run dlkern's op, torch in float32 and torch in
float64 on the same inputs, forward and every gradient, and judge the errors by the registry's
tolerance rule. Nothing here times anything."""
from __future__ import annotations

import math
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
    max_rel: float = 0.0   # max |dlkern - float64| / |float64| over nonzero references
    where: tuple = ()      # index of the largest absolute error (in the full tensor)
    margin: float = 0.0    # the largest of (error / its bound) over the criteria applied: < 1 ok

    def __str__(self):
        return (f"{self.what}: {'ok' if self.ok else 'FAILED'} err {self.err:.3g} "
                f"(torch {self.torch_err:.3g}, bound {self.bound:.3g}), max rel {self.max_rel:.3g}, "
                f"rel-L2 {self.rel_l2:.3g} (torch {self.torch_rel_l2:.3g})"
                f"{' at ' + str(list(self.where)) if self.where else ''}"
                f"{' ' + self.detail if self.detail else ''}")


def same_values(a, b) -> bool:
    """Equal shapes and values, NaN equal to NaN (non-tensors compared with ==): how "the op left
    its input unchanged" is judged, here and in bench's after-timing check."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.shape == b.shape and
                torch.equal(torch.nan_to_num(a.detach()), torch.nan_to_num(b.detach())))
    return a == b


def leaf_kwargs(inputs: Inputs) -> dict:
    """The generator's arguments as fresh autograd leaves: tensors detached (layout and strides
    kept, storage shared), those named in `inputs.grad` requiring grad."""
    return {k: (v.detach().requires_grad_(k in inputs.grad) if isinstance(v, torch.Tensor) else v)
            for k, v in inputs.kwargs.items()}


def _to(inputs: Inputs, dtype) -> dict:
    out = {}
    for k, v in inputs.kwargs.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            # a copy even when the dtype already matches: a kernel that writes its inputs must
            # not be able to change what the references see
            t = v.detach().to(dtype, copy=True)
            if k in inputs.grad:
                t.requires_grad_(True)
            out[k] = t
        else:
            out[k] = v
    return out


def cast(kwargs: dict, dtype: torch.dtype) -> dict:
    """The floating tensors of `kwargs` rounded to `dtype` (differentiable; layout kept where
    dense); the rest as they are."""
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point()
                else v) for k, v in kwargs.items()}


def inputs_at(spec: OpSpec, params, device: str, seed: int,
              dtype: torch.dtype = torch.float32) -> Inputs:
    """The op's seeded inputs with their floating tensors rounded to `dtype` (the generator makes
    float32)."""
    inputs = spec.make_inputs(params, device, seed)
    if dtype == torch.float32:
        return inputs
    return Inputs(cast(inputs.kwargs, dtype), inputs.grad)


def _run(fn, kwargs: dict, grad_names, grad_out, grad_layout: str | None = None):
    out = fn(**kwargs)
    grads = {}
    if grad_names:
        go = grad_out(out.shape).to(out.device, out.dtype)
        if grad_layout is not None and grad_layout in layouts_for(go, keep_values=True):
            go = relayout(go, grad_layout)
        wrt = [kwargs[n] for n in grad_names]
        gs = torch.autograd.grad(out, wrt, go, allow_unused=True)
        grads = {n: gr for n, gr in zip(grad_names, gs)}
    return out.detach(), grads


def _grad_out(seed: int):
    """A seeded float64 upstream gradient per output shape, made once and shared by the three
    runs (making 16M-element randn tensors three times was a third of a large check's time)."""
    cache = {}

    def make(shape):
        key = tuple(shape)
        if key not in cache:
            g = torch.Generator(device="cpu").manual_seed(seed)
            cache[key] = torch.randn(key, generator=g, dtype=torch.float64)
        return cache[key]
    return make


def _judge(what: str, got, f32, f64, tol: Tolerance, dtype: torch.dtype | None = None,
           torch_scale: float = 1.0) -> Verdict:
    """`got` (expected in `dtype`, default torch's: f32's) against the float64 reference f64,
    the bound from torch's own result f32 (its error times `torch_scale`)."""
    got, f32, f64 = got.detach().cpu(), f32.detach().cpu(), f64.detach().cpu()
    dtype = dtype or f32.dtype
    if got.shape != f64.shape:
        return Verdict(what, False, float("inf"), 0.0, 0.0, float("inf"), 0.0,
                       f"shape {tuple(got.shape)} != {tuple(f64.shape)}")
    if got.dtype != dtype:
        return Verdict(what, False, float("inf"), 0.0, 0.0, float("inf"), 0.0,
                       f"dtype {got.dtype} != torch's {dtype}")
    shape = tuple(f64.shape)
    tiny = torch.finfo(f32.dtype).tiny
    if dtype != torch.float64:
        # from half a unit in the last place beyond the dtype's largest value on, the rounded
        # reference is an infinity
        fi = torch.finfo(dtype)
        big = f64.abs() >= fi.max + math.ldexp(fi.eps, math.frexp(fi.max)[1] - 2)
        f64 = torch.where(big, f64.sign() * float("inf"), f64)
    got, f32, f64 = got.reshape(-1).double(), f32.reshape(-1).double(), f64.reshape(-1)

    def at(i):
        return tuple(int(x) for x in torch.unravel_index(torch.tensor(i), shape)) if shape else ()
    # NaN must appear exactly where torch puts it (in float32 and float64 alike).
    nan_got, nan_ref = torch.isnan(got), torch.isnan(f32) | torch.isnan(f64)
    if not torch.equal(nan_got, nan_ref):
        i = int((nan_got != nan_ref).nonzero()[0])
        return Verdict(what, False, float("nan"), 0.0, 0.0, float("nan"), 0.0,
                       f"NaN mismatch: dlkern {got[i].item()}, torch {f32[i].item()}",
                       where=at(i))
    inf_ref = torch.isinf(f64)
    special = nan_ref | inf_ref
    index = None
    if bool(special.any()):
        # Infinities must match exactly too; errors are measured on the finite rest.
        if not torch.equal(got[inf_ref], f64[inf_ref]):
            i = int((inf_ref & (got != f64)).nonzero()[0])
            return Verdict(what, False, float("inf"), 0.0, 0.0, float("inf"), 0.0,
                           f"inf mismatch: dlkern {got[i].item()}, float64 {f64[i].item()}",
                           where=at(i))
        index = (~special).nonzero().reshape(-1)
        g, t, r = got[index], f32[index], f64[index]
    else:
        g, t, r = got, f32, f64
    if r.numel() == 0:
        return Verdict(what, True, 0.0, 0.0, 0.0, 0.0, 0.0)
    # Elementwise: |dlkern - float64| <= k * max|torch - float64| + floor * max|float64|, an
    # atol test whose atol is torch's own float32 error on these inputs.
    err = (g - r).abs_()
    terr_max = (t - r).abs_().max().item() * torch_scale
    scale = r.abs().max().item()
    bound = tol.k * terr_max + tol.floor * scale
    # Norm-wise: relative L2 error within k times torch's (benchdnn judges batchnorm backward so).
    rnorm = r.norm().item() or 1.0
    rel, trel = err.norm().item() / rnorm, (t - r).norm().item() / rnorm * torch_scale
    rel_bound = tol.k * trel + tol.floor
    i = int(err.argmax())
    err_max = err[i].item()
    where = at(int(index[i]) if index is not None else i)
    max_rel = (err / r.abs()).nan_to_num_(0.0, 0.0, 0.0).max().item()
    # Mostly zeros where torch's float32 result is not (KernelBench issue 165: an all-zeros
    # softmax of long rows is within a loose atol of the real one). Refused whatever the bounds
    # say. Counted where torch's float32 value is a normal number: underflow to 0 (float64 tiny
    # values) and flushing float32 denormals to 0 are both legitimate.
    nz32 = t.abs() >= tiny
    n_nz32 = int(nz32.sum().item())
    zeros = int(((g == 0) & nz32).sum().item())
    mostly_zero = zeros > 0 and zeros > 0.5 * n_nz32
    def ratio(e, b):
        return e / b if b > 0 else (0.0 if e == 0 else float("inf"))
    margin = max(ratio(err_max, bound), ratio(rel, rel_bound))
    ok = err_max <= bound and rel <= rel_bound and not mostly_zero
    detail = ""
    if mostly_zero:
        detail = f"mostly zeros: {zeros} of {n_nz32} outputs are 0 where torch's are not"
    elif not ok:
        detail = (f"dlkern {g[i].item():.9g}, float64 {r[i].item():.9g}, "
                  f"torch {t[i].item():.9g} there")
    return Verdict(what, ok, err_max, terr_max, bound, rel, trel, detail, max_rel, where, margin)


# ---- layouts: every tensor argument as a view that is not plain contiguous memory -------------
# A kernel that reads a view as if it were dense computes from the wrong elements without any
# error. The views below keep the argument's values (except "expanded") and fill whatever lies
# between its elements with NaN, so that any read outside the view turns the result into NaN.
LAYOUTS = ("strided", "padded", "permuted", "offset", "expanded")


def _gap_fill(t: torch.Tensor):
    return float("nan") if t.is_floating_point() else 0


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """`t` as a `layout` view: "strided" every other element of a buffer twice as long in the
    last dim (W[::2]); "padded" rows of unit stride spaced wider than they are long (x[:, :k] of
    a wider buffer); "permuted" dims reversed in memory (a transpose for 2-D); "offset" at
    storage offset 1 (4 bytes: no vector alignment); "expanded" the first element of the last dim
    repeated along it (stride 0; other values than t's)."""
    if layout == "strided":
        base = t.new_full((*t.shape[:-1], 2 * t.shape[-1]), _gap_fill(t))
        view = base[..., ::2]
    elif layout == "padded":
        base = t.new_full((*t.shape[:-1], t.shape[-1] + 3), _gap_fill(t))
        view = base[..., :t.shape[-1]]
    elif layout == "permuted":
        order = tuple(reversed(range(t.dim())))
        return t.permute(order).contiguous().permute(order)
    elif layout == "offset":
        base = t.new_full((t.numel() + 1,), _gap_fill(t))
        view = base[1:].view(t.shape)
    elif layout == "expanded":
        return t[..., :1].expand(t.shape)
    else:
        raise ValueError(f"dlkern.testing.relayout: unknown layout {layout!r}; known: {LAYOUTS}")
    view.copy_(t)
    return view


def layouts_for(t: torch.Tensor, keep_values: bool) -> tuple[str, ...]:
    """The layouts that give `t` another memory layout (none for an empty tensor). keep_values:
    the values must stay as made -- the upstream gradient, or an argument the op writes in place
    (no stride-0 view): no "expanded"."""
    if t.numel() == 0:
        return ()
    out = ["offset"]
    if t.dim() >= 1:
        out.append("strided")
    if t.dim() >= 2 and t.shape[:-1].numel() > 1:
        out.append("padded")
    if sum(n > 1 for n in t.shape) >= 2:
        out.append("permuted")
    if t.dim() >= 1 and t.shape[-1] > 1 and not keep_values:
        out.append("expanded")
    return tuple(layout for layout in LAYOUTS if layout in out)


def layout_plans(spec: OpSpec, case: Case, device: str = "cpu") -> list[dict]:
    """One plan per layout: every tensor argument of the case, and the upstream gradient, as a
    non-contiguous view at once, argument j taking its allowed layouts in turn, so that across the
    plans each argument meets every layout it allows."""
    inputs = spec.make_inputs(case.params, device, 0)
    tensors = [(k, v) for k, v in inputs.kwargs.items() if isinstance(v, torch.Tensor)]
    # the upstream gradient keeps its values: a stride-0 one is constant along a dim, where
    # softmax's gradient is exactly 0 and no tolerance can judge it (tests/test_ops.py checks
    # stride-0 upstream gradients against their contiguous copies instead)
    value_keeping = [layout for layout in LAYOUTS if layout != "expanded"]
    plans = []
    for i in range(len(LAYOUTS)):
        plan = {}
        for j, (name, t) in enumerate(tensors):
            allowed = layouts_for(t, keep_values=name in spec.mutates)
            if allowed:
                plan[name] = allowed[(i + j) % len(allowed)]
        if inputs.grad:
            plan["grad_output"] = value_keeping[i % len(value_keeping)]
        plans.append(plan)
    return plans


def check(spec: OpSpec, case: Case, device: str = "cpu", seed: int = 0,
          fn=None, layouts: dict | None = None, grad: tuple[str, ...] | None = None,
          dtype: torch.dtype = torch.float32) -> list[Verdict]:
    """Forward and every gradient of `fn` (default: the op's dlkern function) against torch at
    `dtype` and in float64 on one seeded input of `case`. Also verifies the inputs were not
    written.

    `layouts` ({argument name or "grad_output": layout}) gives those arguments, and the upstream
    gradient, to every run as `relayout` views (the references see the same values). `grad`
    names the arguments that require grad instead of the generator's choice. `dtype`: the
    generator's floating tensors are rounded to it and `fn`'s results must be in it; the bound
    is k x torch's own error at that dtype (spec.tolerances(dtype)). For float64, whose
    reference is torch's float64 itself, torch's float32 error scaled by eps64/eps32 stands in
    for its own."""
    fn = fn or spec.fn
    inputs = inputs_at(spec, case.params, device, seed, dtype)
    if grad is not None:
        inputs = Inputs(inputs.kwargs, tuple(grad))
    layouts = dict(layouts or {})
    grad_layout = layouts.pop("grad_output", None)
    for k, layout in layouts.items():
        if not isinstance(inputs.kwargs.get(k), torch.Tensor) or layout not in layouts_for(
                inputs.kwargs[k], keep_values=k in spec.mutates):
            raise ValueError(f"dlkern.testing.check: {spec.name} {case.name}: no {layout!r} view "
                             f"of argument {k!r}")
    if layouts:
        inputs = Inputs({k: relayout(v, layouts[k]) if k in layouts else v
                         for k, v in inputs.kwargs.items()}, inputs.grad)
    snapshot = {k: v.clone() for k, v in inputs.kwargs.items() if isinstance(v, torch.Tensor)}
    scale = 1.0
    ref_dtype = dtype
    if dtype == torch.float64:
        ref_dtype = torch.float32
        scale = torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
    kw32 = _to(inputs, ref_dtype)       # torch at the dtype ("32": float32 by default)
    kw64 = _to(inputs, torch.float64)   # both copied before dlkern runs (it may update its inputs)
    # dlkern gets the generator's tensors themselves (layout and strides as made), with grads.
    go = _grad_out(seed + 1000)
    if torch.finfo(dtype).eps > torch.finfo(torch.float32).eps:
        # the float64 reference differentiates with the upstream gradient the others get
        go = (lambda make: lambda shape: make(shape).to(dtype).double())(go)
    try:
        out, grads = _run(fn, leaf_kwargs(inputs), inputs.grad, go, grad_layout)
    except Exception as e:  # a kernel that raises (or breaks autograd) on valid input is wrong
        return [Verdict("run", False, float("nan"), 0.0, 0.0, float("nan"), 0.0,
                        f"raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")]
    out32, grads32 = _run(spec.ref, kw32, inputs.grad, go)
    out64, grads64 = _run(spec.ref, kw64, inputs.grad, go)
    tol_f, tol_b = spec.tolerances(dtype)
    verdicts = [_judge("forward", out, out32, out64, tol_f, dtype, scale)]
    for n in inputs.grad:
        verdicts.append(_judge(f"grad[{n}]", grads[n], grads32[n], grads64[n], tol_b, dtype,
                               scale))
    for k in spec.mutates:
        if isinstance(inputs.kwargs.get(k), torch.Tensor):
            verdicts.append(_judge(f"updated[{k}]", inputs.kwargs[k], kw32[k], kw64[k],
                                   tol_f, inputs.kwargs[k].dtype, scale))
    for k, before in snapshot.items():
        if k in spec.mutates:
            continue
        if not same_values(before, inputs.kwargs[k]):
            verdicts.append(Verdict(f"input[{k}]", False, 0, 0, 0, 0, 0, "the op wrote its input"))
    return verdicts


# ---- whole models (dlkern.models, bench.models) ------------------------------------------------
# A model is checked the way an op is: its logits, the gradient of every parameter and its updated
# running statistics against the same network on torch's layers in float32 and float64, each
# tensor judged by the tolerance of the registry op that owns it. The references take the
# candidate's ReLU masks and max-pool argmaxes (check_model says why).

def model_check_mode(model: torch.nn.Module) -> torch.nn.Module:
    """Train mode (batchnorm on batch statistics, running statistics updated) with dropout off,
    so that two runs draw no random masks."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.eval()
    return model


# module class -> registry op whose tolerances judge the module's parameters and buffers
_MODULE_OPS = ((torch.nn.Conv2d, "conv2d"), (torch.nn.modules.batchnorm._BatchNorm, "batch_norm"),
               (torch.nn.Linear, "linear"), (torch.nn.MultiheadAttention, "multihead_attention"))


def model_tolerances(model: torch.nn.Module, dtype: torch.dtype = torch.float32
                     ) -> tuple[dict, Tolerance]:
    """{parameter or buffer name: (forward, backward) Tolerance of its module's op at `dtype`},
    and the logits' tolerance: the loosest forward tolerance among the model's ops."""
    from . import registry
    per, used = {}, set()
    for prefix, m in model.named_modules():
        for cls, op in _MODULE_OPS:
            if isinstance(m, cls):
                spec = registry.get(op)
                used.add(op)
                for n, _ in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                    per[f"{prefix}.{n}" if prefix else n] = spec.tolerances(dtype)
                break
    forward = [registry.get(n).tolerances(dtype)[0] for n in sorted(used or {"linear"})]
    return per, Tolerance(k=max(t.k for t in forward), floor=max(t.floor for t in forward))


def model_forward_backward(model: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """(logits, {parameter: gradient}, {floating buffer: value after the forward})."""
    params = dict(model.named_parameters())
    out = model(x)
    grads = torch.autograd.grad(out, list(params.values()), grad_out.to(out.dtype),
                                allow_unused=True)
    bufs = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return out.detach(), dict(zip(params, grads)), bufs


class _Branches:
    """The branch decisions of one forward: every ReLU's mask (input > 0) and every max-pool's
    argmax indices, per module in call order (a ResNet block calls its ReLU twice)."""

    def __init__(self):
        self.relu: dict[str, list] = {}
        self.pool: dict[str, list] = {}

    def _hooks(self, model, record: bool):
        handles = []
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.ReLU):
                if record:
                    def pre(mod, inp, name=name):
                        self.relu.setdefault(name, []).append(inp[0].detach() > 0)
                    handles.append(m.register_forward_pre_hook(pre))
                else:
                    m.inplace = False          # the hook needs the input as it came in
                    def post(mod, inp, out, name=name):
                        return inp[0] * self.relu[name].pop(0).to(inp[0].dtype)
                    handles.append(m.register_forward_hook(post))
            elif isinstance(m, torch.nn.MaxPool2d):
                if record:
                    def pre(mod, inp, name=name):
                        _, idx = torch.nn.functional.max_pool2d(
                            inp[0].detach(), mod.kernel_size, mod.stride, mod.padding,
                            mod.dilation, mod.ceil_mode, return_indices=True)
                        self.pool.setdefault(name, []).append(idx)
                    handles.append(m.register_forward_pre_hook(pre))
                else:
                    def post(mod, inp, out, name=name):
                        idx = self.pool[name].pop(0)
                        return inp[0].flatten(2).gather(2, idx.flatten(2)).view(idx.shape)
                    handles.append(m.register_forward_hook(post))
        return handles


@dataclass
class ModelReference:
    """The network on torch's layers at the checked dtype ("m32": float32 for float32 and
    float64 models, see check) and in float64 (copies, in model_check_mode), the input and the
    upstream gradient (rounded to the dtype), the tolerances, and the scale of torch's error
    (eps64/eps32 for float64): what check_model judges against."""
    x: torch.Tensor
    grad_out: torch.Tensor
    m32: torch.nn.Module
    m64: torch.nn.Module
    tol: dict
    tol_logits: Tolerance
    dtype: torch.dtype = torch.float32
    scale: float = 1.0


def model_reference(torch_model: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor,
                    dtype: torch.dtype = torch.float32) -> ModelReference:
    """The reference for check_model of a model in `dtype`, from `torch_model` (the network on
    torch's layers, with the candidate's weights and buffers, in float32; left unchanged:
    copies are kept). The rule is check's: the candidate's error against float64 within k x
    torch's own error at `dtype`."""
    import copy
    low, scale = dtype, 1.0
    if dtype == torch.float64:
        low, scale = torch.float32, torch.finfo(torch.float64).eps / torch.finfo(torch.float32).eps
    m32 = model_check_mode(copy.deepcopy(torch_model).to(low))
    m64 = model_check_mode(copy.deepcopy(torch_model).double())
    tol, tol_logits = model_tolerances(torch_model, dtype)
    if torch.finfo(dtype).eps > torch.finfo(torch.float32).eps:
        grad_out = grad_out.to(dtype)      # the float64 reference sees the rounded gradient too
    return ModelReference(x.to(dtype), grad_out, m32, m64, tol, tol_logits, dtype, scale)


def check_model(model: torch.nn.Module, ref: ModelReference, buffers: bool = True
                ) -> list[Verdict]:
    """Verdicts for `model` (same weights and buffers as the reference's; put in
    model_check_mode, its running statistics updated) on the reference's input: logits, every
    parameter's gradient and, with `buffers`, the running statistics after the forward.

    The references follow the candidate's branches: every ReLU takes the candidate's mask and
    every max-pool the candidate's argmax. Where two pooled values are within rounding of each
    other, or a ReLU input within rounding of 0, float32 and float64 may pick different branches
    and route a gradient to another element; one such flip in VGG16's 28x28 layers moved the
    gradients of every earlier layer by 0.3% (torch's own rounding moved them by 1e-6), decided
    by which side's rounding happened to land where, and in ResNet50 at 224x224 ReLU flips made
    torch's own float32 gradients 1-2.5% from float64 (torch on 1 thread failed the rule against
    its own 2-thread error). With the branches fixed, torch's error there is ~5e-5 and what is
    judged is the rounding of the two implementations only."""
    import copy
    br = _Branches()
    handles = br._hooks(model, record=True)
    try:
        out, grads, bufs = model_forward_backward(model_check_mode(model), ref.x, ref.grad_out)
    finally:
        for h in handles:
            h.remove()
    results = []
    low = next(ref.m32.parameters()).dtype
    for m, dt in ((ref.m32, low), (ref.m64, torch.float64)):
        m = copy.deepcopy(m)          # its running statistics move; the reference's stay
        replay = _Branches()
        replay.relu = {k: list(v) for k, v in br.relu.items()}
        replay.pool = {k: list(v) for k, v in br.pool.items()}
        replay._hooks(m, record=False)
        results.append(model_forward_backward(m, ref.x.to(dt), ref.grad_out.to(dt)))
    (o32, g32, b32), (o64, g64, b64) = results
    def judge(what, got, f32, f64, tol):
        return _judge(what, got, f32, f64, tol, ref.dtype, ref.scale)
    vs = [judge("logits", out, o32, o64, ref.tol_logits)]
    for n, g in grads.items():
        if g is None or g32.get(n) is None:
            if (g is None) != (g32.get(n) is None):
                vs.append(Verdict(f"grad[{n}]", False, float("inf"), 0, 0, 0, 0,
                                  "a gradient on one side only"))
            continue
        vs.append(judge(f"grad[{n}]", g, g32[n], g64[n], ref.tol[n][1]))
    if buffers:
        for n, b in bufs.items():
            vs.append(judge(f"buffer[{n}]", b, b32[n], b64[n], ref.tol[n][0]))
    return vs

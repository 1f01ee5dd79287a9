"""`--impl cupy`: CuPy as a second GPU peer, where CuPy has an implementation of the op.

- linear: `x @ w.T (+ b)` through CuPy's matmul (cuBLAS SGEMM); backward the two GEMMs and a sum.
- softmax: CuPy elementwise and reduction kernels, exp(x - max) / sum, and the fused-form
  backward y * (g - sum(g * y)).
conv2d and batchnorm have no CuPy implementation (CuPy's cuDNN bindings are not a public,
stable API), so those rows are refused with the reason, as is every CPU row.

Tensors cross by DLPack (no copies), and CuPy runs on torch's current stream, so the timings
measure the same queue torch's and dlkern's kernels run on. Autograd goes through
torch.autograd.Function, so the Backward and Total passes time CuPy's backward too.
"""
from __future__ import annotations

import torch

INSTALL = ("CuPy is not installed: pip install -e .[cupy] (cupy-cuda13x; use the cuda12 extra, "
           "cupy-cuda12x, for a CUDA 12 runtime)")


def available() -> str | None:
    """None when CuPy can run here, else the one-line reason."""
    try:
        import cupy  # noqa: F401
    except Exception as e:  # ImportError, or a CuPy built for another CUDA failing to load
        return f"{INSTALL} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    return None


def _stream():
    import cupy
    return cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream)


def _cp(t: torch.Tensor):
    import cupy
    return cupy.from_dlpack(t.detach())


def _th(a) -> torch.Tensor:
    return torch.from_dlpack(a)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        with _stream():
            y = _cp(x.reshape(-1, x.shape[-1])) @ _cp(w).T
            if b is not None:
                y += _cp(b)
        return _th(y).view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx = dw = db = None
        with _stream():
            g2 = _cp(g.reshape(-1, g.shape[-1]).contiguous())
            if need[0]:
                dx = _th(g2 @ _cp(w)).view(x.shape)
            if need[1]:
                dw = _th(g2.T @ _cp(x.reshape(-1, x.shape[-1])))
            if ctx.has_bias and need[2]:
                db = _th(g2.sum(axis=0))
        return dx, dw, db


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim):
        import cupy
        d = dim % max(x.dim(), 1)
        with _stream():
            a = _cp(x.contiguous())
            e = cupy.exp(a - a.max(axis=d, keepdims=True))
            y = _th(e / e.sum(axis=d, keepdims=True))
        ctx.save_for_backward(y)
        ctx.dim = d
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        with _stream():
            yc, gc = _cp(y), _cp(g.contiguous())
            dx = _th(yc * (gc - (gc * yc).sum(axis=ctx.dim, keepdims=True)))
        return dx, None


def linear(input, weight, bias=None):
    return _Linear.apply(input, weight, bias)


def softmax(input, dim):
    return _Softmax.apply(input, dim)


FUNCTIONS = {"linear": linear, "softmax": softmax}


def label() -> str:
    import cupy
    return f"CuPy {cupy.__version__}"

"""Winograd's error against float64 on ResNet and VGG 3x3 layers (docs/conv2d.md's tables).

    python -m bench.winograd_error            # dlkern's winograd and gemm routes, y / dx / dw
    python -m bench.winograd_error --tiles    # also F(m x m, 3x3) for m = 2, 3, 4, emulated

Errors are max |result - float64| over torch float32's own max error on the same inputs (batch
2, randn inputs, the registry's uniform weights). --tiles emulates each tile size in float32 with
torch's matmuls (filter transformed in float64) and reports the error as a fraction of the
registry's bound (4x torch's error plus 2e-6 of the largest output): above 1 fails.
"""
from __future__ import annotations

import argparse
from fractions import Fraction

import torch

LAYERS = ((64, 56, 64), (128, 28, 128), (256, 14, 256), (512, 14, 512), (512, 7, 512),
          (64, 224, 64), (256, 56, 256))
# Cook-Toom points per output tile size (infinity is the last point of each)
POINTS = {2: (0, 1, -1), 3: (0, 1, -1, 2), 4: (0, 1, -1, Fraction(1, 2), -2)}


def _inputs(c, hw, k, g):
    x = torch.randn(2, c, hw, hw, generator=g)
    w = (torch.rand(k, c, 3, 3, generator=g) * 2 - 1) / (9 * c) ** 0.5
    return x, w, torch.randn(2, k, hw, hw, generator=g)


def _grads(fn, x, w, dy):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = fn(x, w, None, 1, 1)
    y.backward(dy)
    return y.detach(), x.grad, w.grad


def kernel_errors(g):
    from dlkern import functional as DF
    from dlkern.ops.conv2d import preference
    print("| layer | y | dx | dw |   (winograd / gemm, in units of torch float32's error)")
    for c, hw, k in LAYERS:
        x, w, dy = _inputs(c, hw, k, g)
        ref = _grads(torch.nn.functional.conv2d, x.double(), w.double(), dy.double())
        tor = _grads(torch.nn.functional.conv2d, x, w, dy)
        out = {}
        for name in ("winograd", "gemm"):
            with preference(name):
                out[name] = _grads(DF.conv2d, x, w, dy)
        cells = []
        for i in range(3):
            scale = (tor[i].double() - ref[i]).abs().max().item()
            cells.append(" / ".join(f"{(out[n][i].double() - ref[i]).abs().max().item() / scale:.2f}"
                                    for n in ("winograd", "gemm")))
        print(f"| {c}x{hw}x{hw} -> {k} | " + " | ".join(cells) + " |", flush=True)


def _matrices(m):
    """A^T (m x a), G (a x 3), B^T (a x a) of F(m, 3) from POINTS[m], a = m + 2."""
    pts, a = [Fraction(p) for p in POINTS[m]], m + 2

    def poly(roots):
        out = [Fraction(1)]
        for q in roots:
            out = [(out[i - 1] if i else 0) - q * (out[i] if i < len(out) else 0)
                   for i in range(len(out) + 1)]
        return out + [Fraction(0)] * (a - len(out))
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    gm = []
    for j, p in enumerate(pts):
        den = Fraction(1)
        for q in pts[:j] + pts[j + 1:]:
            den *= p - q
        gm.append([p ** i / den for i in range(3)])
    gm.append([Fraction(0), Fraction(0), Fraction(1)])
    bt = [poly(pts[:j] + pts[j + 1:]) for j in range(len(pts))] + [poly(pts)]
    return [torch.tensor([[float(v) for v in row] for row in t], dtype=torch.float64)
            for t in (at, gm, bt)]


def _emulate(x, w, m):
    at, gm, bt = _matrices(m)
    n, c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    xp = torch.zeros(n, c, th * m + 2, tw * m + 2)
    xp[:, :, 1:h + 1, 1:wd + 1] = x
    d = xp.unfold(2, m + 2, m).unfold(3, m + 2, m)
    v = bt.float() @ d @ bt.T.float()
    u = (gm @ w.double() @ gm.T).float()
    y = at.float() @ torch.einsum("kcij,nctuij->nktuij", u, v) @ at.T.float()
    return y.permute(0, 1, 2, 4, 3, 5).reshape(n, -1, th * m, tw * m)[:, :, :h, :wd]


def tile_errors(g):
    print("| layer | " + " | ".join(f"F({m}x{m})" for m in POINTS) + " |   (error / bound)")
    for c, hw, k in LAYERS[:5]:
        x, w, _ = _inputs(c, hw, k, g)
        y64 = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
        terr = (torch.nn.functional.conv2d(x, w, padding=1).double() - y64).abs().max().item()
        bound = 4 * terr + 2e-6 * y64.abs().max().item()
        cells = [f"{(_emulate(x, w, m).double() - y64).abs().max().item() / bound:.2f}"
                 for m in POINTS]
        print(f"| {c}x{hw}x{hw} -> {k} | " + " | ".join(cells) + " |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.winograd_error", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", action="store_true", help="also the emulated tile sizes")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    kernel_errors(g)
    if args.tiles:
        tile_errors(g)


if __name__ == "__main__":
    main()

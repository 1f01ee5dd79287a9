"""multi_head_attention: dlkern.functional.multi_head_attention_forward mirrors
torch.nn.functional.multi_head_attention_forward (sequence-first (L, N, E) or unbatched (L, E)
inputs; dlkern.nn.MultiheadAttention adds batch_first).

A composite, not a kernel of its own: the input and output projections are dlkern.linear and
the attention weights dlkern.softmax; the two batched products (Q Kᵀ and P V) are torch.bmm, as
are ReLU and pooling in the models. The computation is torch's "need_weights" path (explicit
scores, additive float mask, softmax, dropout on the weights, P V), which both need_weights
settings use here: the weights of a (N·H, L, S) softmax are what dlkern computes.
"""
from __future__ import annotations

import math

import torch

from .. import registry
from ..registry import Case, Inputs, OpSpec, Tolerance
from .linear import linear
from .softmax import softmax

_OP = "dlkern.multi_head_attention_forward"


def _fail(arg: str, expected: str, got) -> ValueError:
    return ValueError(f"{_OP}: argument '{arg}' must be {expected}, got {got}")


def _float_mask(mask, name: str, dtype):
    """torch's rule: a bool mask is -inf where True (masked out), a float mask is added."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{_OP}: argument '{name}' must be a tensor or None, got "
                        f"{type(mask).__name__}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf"))
    if not mask.is_floating_point():
        raise _fail(name, "a bool or floating-point tensor", mask.dtype)
    if mask.dtype != dtype:
        raise _fail(name, f"a bool tensor or a {dtype} tensor (the query's dtype)", mask.dtype)
    return mask


def _project(query, key, value, in_proj_weight, in_proj_bias, separate, qw, kw, vw):
    """q, k, v = the three input projections, with dlkern.linear. Self-attention (query is key
    is value) is one (3E x E) product; key is value one E-row and one 2E-row product."""
    E = query.shape[-1]
    if separate:
        for n, w, x in (("q_proj_weight", qw, query), ("k_proj_weight", kw, key),
                        ("v_proj_weight", vw, value)):
            if w is None or w.dim() != 2 or w.shape[0] != E or w.shape[1] != x.shape[-1]:
                raise _fail(n, f"a ({E}, {x.shape[-1]}) tensor when use_separate_proj_weight "
                            "is True", None if w is None else tuple(w.shape))
        bq, bk, bv = (None,) * 3 if in_proj_bias is None else in_proj_bias.chunk(3)
        return linear(query, qw, bq), linear(key, kw, bk), linear(value, vw, bv)
    if in_proj_weight is None or tuple(in_proj_weight.shape) != (3 * E, E):
        raise _fail("in_proj_weight", f"a ({3 * E}, {E}) tensor", None if in_proj_weight is None
                    else tuple(in_proj_weight.shape))
    if query is key and key is value:
        qkv = linear(query, in_proj_weight, in_proj_bias)
        return qkv.split(E, dim=-1)
    wq, wkv = in_proj_weight.split((E, 2 * E))
    bq, bkv = (None, None) if in_proj_bias is None else in_proj_bias.split((E, 2 * E))
    q = linear(query, wq, bq)
    if key is value:
        k, v = linear(key, wkv, bkv).split(E, dim=-1)
        return q, k, v
    wk, wv = wkv.split(E)
    bk, bv = (None, None) if bkv is None else bkv.split(E)
    return q, linear(key, wk, bk), linear(value, wv, bv)


def _check_tensors(query, key, value, key_padding_mask, attn_mask, params, num_heads):
    """dtype, device and rank of every tensor argument; num_heads a positive int."""
    for n, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{_OP}: argument '{n}' must be a tensor, got {type(t).__name__}")
        if t.dtype != torch.float32:
            raise _fail(n, "a float32 tensor", t.dtype)
    for n, t in (("key", key), ("value", value), ("key_padding_mask", key_padding_mask),
                 ("attn_mask", attn_mask), *params):
        if t is not None and t.device != query.device:
            raise ValueError(f"{_OP}: arguments 'query' and '{n}' must be on the same device, "
                             f"got {query.device} and {t.device}")
    for n, t in params:
        if t is not None and t.dtype != torch.float32:
            raise _fail(n, "a float32 tensor", t.dtype)
    if query.dim() not in (2, 3):
        raise _fail("query", "(L, N, E) or unbatched (L, E)", f"shape {tuple(query.shape)}")
    for n, t in (("key", key), ("value", value)):
        if t.dim() != query.dim():
            raise _fail(n, f"{query.dim()}-D like query {tuple(query.shape)}",
                        f"shape {tuple(t.shape)}")
    if not isinstance(num_heads, int) or num_heads < 1:
        raise _fail("num_heads", "a positive int", num_heads)


def _check_shapes(query, key, value, embed_dim_to_check, num_heads, use_separate_proj_weight):
    """(L, N, E) of the batched query; embed_dim, heads and the keys' and values' shapes."""
    L, N, E = query.shape
    if E != embed_dim_to_check:
        raise _fail("query", f"embedding size {embed_dim_to_check} (embed_dim_to_check)", E)
    if E % num_heads:
        raise _fail("num_heads", f"a divisor of embed_dim {E}", num_heads)
    if key.shape[:2] != value.shape[:2] or key.shape[1] != N:
        raise ValueError(f"{_OP}: arguments 'key' {tuple(key.shape)} and 'value' "
                         f"{tuple(value.shape)} must share sequence length and batch "
                         f"({N}, from query {tuple(query.shape)})")
    if not use_separate_proj_weight and (key.shape[-1] != E or value.shape[-1] != E):
        raise ValueError(f"{_OP}: arguments 'key' {tuple(key.shape)} and 'value' "
                         f"{tuple(value.shape)} must have embed_dim {E} unless "
                         "use_separate_proj_weight (kdim/vdim) is set")
    return L, N, E


def _masks(key_padding_mask, attn_mask, is_causal, L, N, S, num_heads, dtype):
    """The additive masks: attn_mask as (1 or N·H, L, S), key_padding_mask as (N, S)."""
    kpm = _float_mask(key_padding_mask, "key_padding_mask", dtype)
    if is_causal and attn_mask is None:
        raise ValueError(f"{_OP}: is_causal=True needs attn_mask (the causal mask itself, e.g. "
                         "torch.nn.Transformer.generate_square_subsequent_mask(L)); is_causal "
                         "is only a hint")
    mask = _float_mask(attn_mask, "attn_mask", dtype)
    if mask is not None:
        if mask.dim() == 2:
            if tuple(mask.shape) != (L, S):
                raise _fail("attn_mask", f"(L, S) = ({L}, {S}) (from query and key) when 2-D",
                            tuple(mask.shape))
            mask = mask.unsqueeze(0)
        elif mask.dim() == 3:
            if tuple(mask.shape) != (N * num_heads, L, S):
                raise _fail("attn_mask", f"(N*num_heads, L, S) = ({N * num_heads}, {L}, {S}) "
                            "(from query and key) when 3-D", tuple(mask.shape))
        else:
            raise _fail("attn_mask", "2-D (L, S) or 3-D (N*num_heads, L, S)",
                        f"shape {tuple(mask.shape)}")
    if kpm is not None and tuple(kpm.shape) != (N, S):
        raise _fail("key_padding_mask", f"(N, S) = ({N}, {S}) (from query and key)",
                    tuple(kpm.shape))
    return mask, kpm


def _check_out_proj(out_proj_weight, in_proj_bias, out_proj_bias, E):
    if out_proj_weight is None or tuple(out_proj_weight.shape) != (E, E):
        raise _fail("out_proj_weight", f"a ({E}, {E}) tensor",
                    None if out_proj_weight is None else tuple(out_proj_weight.shape))
    for n, b, rows in (("in_proj_bias", in_proj_bias, 3 * E), ("out_proj_bias", out_proj_bias, E)):
        if b is not None and tuple(b.shape) != (rows,):
            raise _fail(n, f"a ({rows},) tensor", tuple(b.shape))


def _pad_masks(mask, kpm):
    """One more key (a bias_k or zero key): the masks let it through."""
    pad = torch.nn.functional.pad
    return None if mask is None else pad(mask, (0, 1)), None if kpm is None else pad(kpm, (0, 1))


def _heads(q, k, v, mask, kpm, bias_k, bias_v, static_k, static_v, add_zero_attn, num_heads):
    """q, k, v as (N·H, len, head_dim), head h of batch entry n at n·H + h, with bias_k/bias_v,
    static_k/static_v and the zero key applied; the mask with the key padding folded in."""
    L, N, E = q.shape
    hd = E // num_heads
    if (bias_k is None) != (bias_v is None):
        raise ValueError(f"{_OP}: arguments 'bias_k' and 'bias_v' must both be given or both "
                         "be None")
    if bias_k is not None:
        if static_k is not None or static_v is not None:
            raise ValueError(f"{_OP}: bias_k/bias_v cannot be added to static_k/static_v")
        k = torch.cat([k, bias_k.reshape(1, 1, E).expand(1, N, E)])
        v = torch.cat([v, bias_v.reshape(1, 1, E).expand(1, N, E)])
        mask, kpm = _pad_masks(mask, kpm)
    q = q.reshape(L, N * num_heads, hd).transpose(0, 1)
    k = k.reshape(k.shape[0], N * num_heads, hd).transpose(0, 1) if static_k is None else static_k
    v = v.reshape(v.shape[0], N * num_heads, hd).transpose(0, 1) if static_v is None else static_v
    for n, t in (("static_k", static_k), ("static_v", static_v)):
        if t is not None and (t.dim() != 3 or t.shape[0] != N * num_heads or t.shape[2] != hd):
            raise _fail(n, f"(N*num_heads, S, head_dim) = ({N * num_heads}, S, {hd})",
                        tuple(t.shape))
    if add_zero_attn:
        zeros = k.new_zeros((N * num_heads, 1, hd))
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        mask, kpm = _pad_masks(mask, kpm)
    S = k.shape[1]
    if v.shape[1] != S:
        raise ValueError(f"{_OP}: keys ({S}) and values ({v.shape[1]}) differ in length")
    if kpm is not None:
        if kpm.shape[-1] != S:
            raise _fail("key_padding_mask", f"(N, S) = ({N}, {S}) (from query and key)",
                        tuple(kpm.shape))
        kpm = kpm.reshape(N, 1, 1, S).expand(N, num_heads, 1, S).reshape(N * num_heads, 1, S)
        mask = kpm if mask is None else mask + kpm
    return q, k, v, mask


def multi_head_attention_forward(
        query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim_to_check: int,
        num_heads: int, in_proj_weight: torch.Tensor | None, in_proj_bias: torch.Tensor | None,
        bias_k: torch.Tensor | None, bias_v: torch.Tensor | None, add_zero_attn: bool,
        dropout_p: float, out_proj_weight: torch.Tensor, out_proj_bias: torch.Tensor | None,
        training: bool = True, key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True, attn_mask: torch.Tensor | None = None,
        use_separate_proj_weight: bool = False, q_proj_weight: torch.Tensor | None = None,
        k_proj_weight: torch.Tensor | None = None, v_proj_weight: torch.Tensor | None = None,
        static_k: torch.Tensor | None = None, static_v: torch.Tensor | None = None,
        average_attn_weights: bool = True, is_causal: bool = False):
    """Like torch.nn.functional.multi_head_attention_forward: returns (attn_output, weights),
    weights None unless need_weights (averaged over heads when average_attn_weights).
    query (L, N, E) or (L, E); key and value (S, N, E_k), (S, N, E_v) or unbatched;
    key_padding_mask (N, S) or (S,); attn_mask (L, S) or (N·num_heads, L, S); bool masks are
    True where attention is not allowed, float masks are added to the scores. is_causal is a hint
    that attn_mask is causal, and like torch's it needs attn_mask."""
    params = (("in_proj_weight", in_proj_weight), ("in_proj_bias", in_proj_bias),
              ("out_proj_weight", out_proj_weight), ("out_proj_bias", out_proj_bias),
              ("q_proj_weight", q_proj_weight), ("k_proj_weight", k_proj_weight),
              ("v_proj_weight", v_proj_weight), ("bias_k", bias_k), ("bias_v", bias_v),
              ("static_k", static_k), ("static_v", static_v))
    _check_tensors(query, key, value, key_padding_mask, attn_mask, params, num_heads)
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            if key_padding_mask.dim() != 1:
                raise _fail("key_padding_mask", "(S,) for unbatched input",
                            f"shape {tuple(key_padding_mask.shape)}")
            key_padding_mask = key_padding_mask.unsqueeze(0)
    L, N, E = _check_shapes(query, key, value, embed_dim_to_check, num_heads,
                            use_separate_proj_weight)
    mask, kpm = _masks(key_padding_mask, attn_mask, is_causal, L, N, key.shape[0], num_heads,
                       query.dtype)
    _check_out_proj(out_proj_weight, in_proj_bias, out_proj_bias, E)
    q, k, v = _project(query, key, value, in_proj_weight, in_proj_bias,
                       use_separate_proj_weight, q_proj_weight, k_proj_weight, v_proj_weight)
    q, k, v, mask = _heads(q, k, v, mask, kpm, bias_k, bias_v, static_k, static_v, add_zero_attn,
                           num_heads)
    q = q * (1.0 / math.sqrt(E // num_heads))
    scores = (torch.baddbmm(mask, q, k.transpose(1, 2)) if mask is not None
              else torch.bmm(q, k.transpose(1, 2)))
    weights = softmax(scores, dim=-1)
    if training and dropout_p > 0.0:
        weights = torch.nn.functional.dropout(weights, p=dropout_p)
    out = torch.bmm(weights, v).transpose(0, 1).reshape(L * N, E)  # from (N·H, L, head_dim)
    out = linear(out, out_proj_weight, out_proj_bias).view(L, N, out_proj_weight.shape[0])
    w = None
    if need_weights:
        w = weights.view(N, num_heads, L, k.shape[1])
        if average_attn_weights:
            w = w.mean(dim=1)
    if not batched:
        out = out.squeeze(1)
        w = None if w is None else w.squeeze(0)
    return out, w


# ---- registry entry ------------------------------------------------------------------------
# Rows are batch-first (N, L, E) as in the tensorgrad suite; fn and ref differ only in which
# multi_head_attention_forward they call.

def _call(impl, query, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias, num_heads,
          key=None, value=None, key_padding_mask=None, attn_mask=None, need_weights=True):
    q = query.transpose(0, 1)
    if key is None:
        k = v = q                           # self-attention: one tensor, one packed projection
    else:
        k, v = key.transpose(0, 1), value.transpose(0, 1)
    E = query.shape[-1]
    out, _ = impl(q, k, v, E, num_heads, in_proj_weight, in_proj_bias, None, None, False, 0.0,
                  out_proj_weight, out_proj_bias, training=True,
                  key_padding_mask=key_padding_mask, need_weights=need_weights,
                  attn_mask=attn_mask)
    return out.transpose(0, 1)


def _mha_fn(**kw):
    return _call(multi_head_attention_forward, **kw)


def _mha_ref(**kw):
    return _call(torch.nn.functional.multi_head_attention_forward, **kw)


def _make_inputs(p, device: str, seed: int) -> Inputs:
    """params: shape (N, L, E), heads, kv (S: cross-attention keys/values of length S; default
    self-attention), mask (none | causal | padding | both | bool | float), kind (normal | hard |
    nan), need_weights (default True, nn.MultiheadAttention's default: torch then computes the
    weights explicitly; False lets torch use its fused scaled_dot_product_attention)."""
    N, L, E = (int(x) for x in p["shape"])
    H = int(p["heads"])
    S = int(p.get("kv", 0)) or L
    cross = "kv" in p
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(max(E, 1))
    x = torch.randn(N, L, E, generator=g)
    kw = {"query": x, "num_heads": H, "need_weights": bool(p.get("need_weights", True)),
          "in_proj_weight": (torch.rand(3 * E, E, generator=g) * 2 - 1) * math.sqrt(6 / (4 * E)),
          "in_proj_bias": (torch.rand(3 * E, generator=g) * 2 - 1) * bound,
          "out_proj_weight": (torch.rand(E, E, generator=g) * 2 - 1) * bound,
          "out_proj_bias": (torch.rand(E, generator=g) * 2 - 1) * bound}
    if cross:
        kw["key"] = torch.randn(N, S, E, generator=g)
        kw["value"] = torch.randn(N, S, E, generator=g)
    kind = p.get("kind", "normal")
    if kind == "hard":
        # large logits (peaked rows) and an offset that cancels in the projections
        kw["query"] = kw["query"] * 4 + 10
    elif kind == "nan" and N * L * E:
        kw["query"] = kw["query"].clone()
        kw["query"][0, 0, 0] = float("nan")
    mask = p.get("mask", "none")
    if mask in ("causal", "both"):
        kw["attn_mask"] = torch.ones(L, S, dtype=torch.bool).triu(1)
    if mask in ("padding", "both") and N and S:
        # entry n ignores its last n % S keys; never every key (a fully masked row is NaN)
        lens = torch.tensor([S - (n % S) for n in range(N)])
        kw["key_padding_mask"] = torch.arange(S)[None, :] >= lens[:, None]
    if mask == "float":
        kw["attn_mask"] = torch.randn(N * H, L, S, generator=g)
    if mask == "bool":
        m = torch.rand(L, S, generator=g) < 0.3
        m[:, 0] = False
        kw["attn_mask"] = m
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    grad = ("query",) + (("key", "value") if cross else ()) + (
        "in_proj_weight", "in_proj_bias", "out_proj_weight", "out_proj_bias")
    return Inputs(kw, grad=grad)


def _edge_cases():
    cases = []
    for (n, l, e, h) in ((1, 1, 1, 1), (1, 1, 8, 2), (2, 3, 4, 1), (3, 7, 12, 3), (2, 5, 16, 16),
                         (4, 17, 24, 4), (2, 33, 40, 5), (5, 13, 64, 8)):
        cases.append(Case(f"{n}x{l}x{e} h={h}", {"shape": (n, l, e), "heads": h}))
    for mask in ("causal", "padding", "both", "bool", "float"):
        cases.append(Case(f"3x9x16 h=4 mask={mask}", {"shape": (3, 9, 16), "heads": 4,
                                                      "mask": mask}))
    cases.append(Case("cross 2x5x16 kv=11 h=2", {"shape": (2, 5, 16), "heads": 2, "kv": 11}))
    cases.append(Case("cross 3x4x8 kv=1 h=2 padding", {"shape": (3, 4, 8), "heads": 2, "kv": 1,
                                                       "mask": "padding"}))
    cases.append(Case("empty batch", {"shape": (0, 4, 8), "heads": 2}))
    cases.append(Case("fused ref 4x17x24 h=4", {"shape": (4, 17, 24), "heads": 4,
                                                "need_weights": False}))
    cases.append(Case("fused ref 3x9x16 h=4 both", {"shape": (3, 9, 16), "heads": 4,
                                                    "mask": "both", "need_weights": False}))
    cases.append(Case("hard 4x16x32 h=4", {"shape": (4, 16, 32), "heads": 4, "kind": "hard"}))
    cases.append(Case("nan 2x6x8 h=2", {"shape": (2, 6, 8), "heads": 2, "kind": "nan"}))
    return tuple(cases)


_BENCH = tuple(Case(f"input={n}x{l}x{e} d_model={e} n_heads={h}", {"shape": (n, l, e), "heads": h},
                    suites=("tensorgrad",))
               for n, l, e, h in ((16, 32, 64, 4), (32, 64, 128, 8), (32, 128, 256, 8)))


def _dims(p):
    N, L, E = (int(x) for x in p["shape"])
    return N, L, int(p.get("kv", 0)) or L, E


def _flops(p):
    N, L, S, E = _dims(p)
    proj = 2 * N * L * E * E * 2 + 2 * N * S * E * E * 2     # q and output; k and v
    attn = 2 * N * L * S * E * 2 + 5 * N * L * S * int(p["heads"])
    return {"forward": proj + attn, "backward": 2 * (proj + attn)}


def _bytes(p):
    N, L, S, E = _dims(p)
    H = int(p["heads"])
    # x, the weights, q/k/v, the (N·H, L, S) weights written and read back, the output
    fwd = 4 * (N * L * E + 4 * E * E + 3 * N * S * E + 2 * N * H * L * S + 2 * N * L * E)
    return {"forward": fwd, "backward": 2 * fwd}


registry.register(OpSpec(
    name="multihead_attention",
    fn=_mha_fn,
    ref=_mha_ref,
    make_inputs=_make_inputs,
    edge_cases=_edge_cases(),
    bench_cases=_BENCH,
    flops=_flops,
    bytes=_bytes,
    # a chain of four products and a softmax: both sides round each differently
    tol_forward=Tolerance(k=4.0, floor=4e-6),
    tol_backward=Tolerance(k=4.0, floor=8e-6),
    devices=registry.kernel_devices(),
    params_doc={"shape": "query shape (N, L, E) batch-first, e.g. 16x32x64",
                "heads": "number of heads (divides E)",
                "kv": "key/value length S for cross-attention (default: self-attention)",
                "mask": "none | causal | padding | both | bool | float (default none)",
                "kind": "normal | hard | nan (default normal)",
                "need_weights": "true | false: torch's explicit path or its fused attention "
                                "(default true, the module's default)"},
    required=("shape", "heads"),
    title="nn.MultiheadAttention",
))

"""Modules that are drop-ins for their torch.nn namesakes: same constructor, parameters,
state_dict keys and repr; forward runs dlkern's kernels. Each subclasses the torch module, so
isinstance checks and loading torch checkpoints keep working. The functional a module calls is its
class attribute `_kernel` (dlkern.models.set_impl plugs a user's function in there)."""
import torch

from . import functional as F
from .ops.softmax import _implicit_dim

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Conv2d", "Linear", "MultiheadAttention",
           "Softmax"]


class Softmax(torch.nn.Softmax):
    """torch.nn.Softmax computed by dlkern.functional.softmax."""
    _kernel = staticmethod(F.softmax)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # dim=None: torch's deprecated implicit choice, with its warning pointing at the caller
        dim = self.dim if self.dim is not None else _implicit_dim(input.dim(), 4)
        return self._kernel(input, dim)


class Linear(torch.nn.Linear):
    """torch.nn.Linear computed by dlkern.functional.linear: same constructor (in_features,
    out_features, bias=True, device, dtype), initialisation, parameters and state_dict keys."""
    _kernel = staticmethod(F.linear)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._kernel(input, self.weight, self.bias)


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d computed by dlkern.functional.conv2d: same constructor (in_channels,
    out_channels, kernel_size, stride, padding incl. 'same'/'valid', dilation, groups, bias,
    padding_mode, device, dtype), initialisation, parameters and state_dict keys.
    padding_mode 'reflect', 'replicate' and 'circular' pad with torch.nn.functional.pad, as
    torch.nn.Conv2d does, and convolve the padded input with dlkern's kernel."""
    _kernel = staticmethod(F.conv2d)

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice,
                                             mode=self.padding_mode)
            return self._kernel(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return self._kernel(input, weight, bias, self.stride, self.padding, self.dilation,
                            self.groups)


class _BatchNormForward:
    """torch.nn's _BatchNorm.forward with dlkern.functional.batch_norm: the same bookkeeping
    (num_batches_tracked, momentum=None as a cumulative average, track_running_stats=False using
    batch statistics in eval too)."""
    _kernel = staticmethod(F.batch_norm)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return self._kernel(input, self.running_mean if use_stats else None,
                            self.running_var if use_stats else None, self.weight, self.bias,
                            bn_training, factor, self.eps)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d computed by dlkern.functional.batch_norm."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by dlkern.functional.batch_norm."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d computed by dlkern.functional.batch_norm."""


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention computed by dlkern.functional.multi_head_attention_forward
    (projections with dlkern's linear, attention weights with dlkern's softmax): same
    constructor (embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim,
    batch_first, device, dtype), parameters, state_dict keys and forward arguments
    (key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal). torch's
    inference fast path (a fused native kernel) is never taken: every call runs dlkern's ops."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if self.batch_first and batched:
            # keep query is key is value (self-attention takes one packed projection)
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight,
            self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self.out_proj.weight, self.out_proj.bias, training=self.training,
            key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        if self.batch_first and batched:
            out = out.transpose(1, 0)
        return out, weights

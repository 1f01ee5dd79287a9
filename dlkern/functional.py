"""Functional ops mirroring torch.nn.functional. Each lives in its op module (dlkern/ops/)."""
from .ops.multihead_attention import multi_head_attention_forward
from .ops.batch_norm import batch_norm
from .ops.conv2d import conv2d
from .ops.linear import linear
from .ops.softmax import softmax

__all__ = ["batch_norm", "conv2d", "linear", "multi_head_attention_forward", "softmax"]

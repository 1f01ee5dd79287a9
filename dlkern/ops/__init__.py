"""One module per op: its functional form, fake (torch.compile) kernels and registry entry.
Importing this package registers them all."""
from . import batch_norm, conv2d, linear, softmax  # noqa: F401
from . import multihead_attention  # noqa: F401,E402  (a composite of linear and softmax)

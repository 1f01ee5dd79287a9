"""One module per op: its functional form, fake (torch.compile) kernels and registry entry.
Importing this package registers them all."""
from . import batchnorm, conv2d, linear, softmax  # noqa: F401
from . import attention  # noqa: F401,E402  (a composite of linear and softmax)

"""Modules that are drop-ins for their torch.nn namesakes: same constructor, parameters,
state_dict keys and repr; forward runs dlkern's kernels. Each subclasses the torch module, so
isinstance checks and loading torch checkpoints keep working."""
import torch

from . import functional as F

__all__ = ["Linear", "Softmax"]


class Softmax(torch.nn.Softmax):
    """torch.nn.Softmax computed by dlkern.functional.softmax."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


class Linear(torch.nn.Linear):
    """torch.nn.Linear computed by dlkern.functional.linear: same constructor (in_features,
    out_features, bias=True, device, dtype), initialisation, parameters and state_dict keys."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)

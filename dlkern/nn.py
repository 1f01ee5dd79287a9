"""Modules that are drop-ins for their torch.nn namesakes: same constructor, parameters,
state_dict keys and repr; forward runs dlkern's kernels. Each subclasses the torch module, so
isinstance checks and loading torch checkpoints keep working."""
import torch

from . import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "Linear", "Softmax"]


class Softmax(torch.nn.Softmax):
    """torch.nn.Softmax computed by dlkern.functional.softmax."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.softmax(input, self.dim, _stacklevel=5)


class Linear(torch.nn.Linear):
    """torch.nn.Linear computed by dlkern.functional.linear: same constructor (in_features,
    out_features, bias=True, device, dtype), initialisation, parameters and state_dict keys."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)


class _BatchNormForward:
    """torch.nn's _BatchNorm.forward with dlkern.functional.batch_norm: the same bookkeeping
    (num_batches_tracked, momentum=None as a cumulative average, track_running_stats=False using
    batch statistics in eval too)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                      else self.momentum)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_stats = not self.training or self.track_running_stats
        return F.batch_norm(input, self.running_mean if use_stats else None,
                            self.running_var if use_stats else None, self.weight, self.bias,
                            bn_training, factor, self.eps)


class BatchNorm1d(_BatchNormForward, torch.nn.BatchNorm1d):
    """torch.nn.BatchNorm1d computed by dlkern.functional.batch_norm."""


class BatchNorm2d(_BatchNormForward, torch.nn.BatchNorm2d):
    """torch.nn.BatchNorm2d computed by dlkern.functional.batch_norm."""


class BatchNorm3d(_BatchNormForward, torch.nn.BatchNorm3d):
    """torch.nn.BatchNorm3d computed by dlkern.functional.batch_norm."""

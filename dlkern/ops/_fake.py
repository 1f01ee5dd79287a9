"""Checks shared by the ops' fake kernels (torch.compile, meta tensors), in the words of the
bindings' own checks (csrc/bindings/checks.h): a fake kernel that accepted what the real one
refuses would return an empty tensor where torch raises."""
import torch


def check_tensors(op: str, input: torch.Tensor, **others) -> None:
    """`input` and every other given tensor float32, the others on input's device (None: not
    given)."""
    for name, t in (("input", input), *others.items()):
        if t is None:
            continue
        torch._check(t.dtype == torch.float32, lambda: (
            f"dlkern.{op}: argument '{name}' must be a float32 tensor, got {t.dtype}"))
        torch._check(t.device == input.device, lambda: (
            f"dlkern.{op}: arguments 'input' and '{name}' must be on the same device, got "
            f"{input.device} and {t.device}"))

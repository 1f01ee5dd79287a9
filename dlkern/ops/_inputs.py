"""The input perturbations the ops' generators share for their edge cases."""
import torch


def spaced(x: torch.Tensor, parts: int, value: float) -> torch.Tensor:
    """A copy of x with `value` at every (numel // parts)-th element (NaN or inf cases)."""
    x = x.clone()
    if x.numel():
        x.view(-1)[:: max(1, x.numel() // parts)] = value
    return x


def offset_with_outliers(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """x + 100 (a large common offset whose products cancel in a sum) with 1% of the elements
    50 times larger: the 'hard' case of the products (linear, conv2d)."""
    if not x.numel():
        return x
    x = x + 100.0
    u = torch.rand(x.shape, generator=g)
    return torch.where(u < 0.01, x * 50, x)

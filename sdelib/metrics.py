"""Measuring models honestly: every figure comes with its standard error.

- `mean_and_standard_error(values)`: the sample mean and s / sqrt(n).
- `dsm_test_loss`: the tutorial-weighted DSM loss of a model on held-out images, with t ~ U(eps, 1)
  and z drawn from a fixed seed, so two models (or two runs) see the same noise.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .losses import dsm_loss
from .sde import SDE


class Estimate(NamedTuple):
    mean: float
    standard_error: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.standard_error:.3f} (n={self.n})"


def mean_and_standard_error(values) -> Estimate:
    """Sample mean and standard error s / sqrt(n) (s with Bessel's correction)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"need at least 2 values for a standard error, got {n}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{int((~torch.isfinite(values)).sum())} of {n} values are not finite")
    return Estimate(values.mean().item(), values.std(unbiased=True).item() / math.sqrt(n), n)


@torch.no_grad()
def dsm_test_loss(model, sde: SDE, images: torch.Tensor, *, batch_size: int = 256, seed: int = 0,
                  eps: float = 1e-5, weighting: str = "std2", device=None) -> Estimate:
    """Per-image DSM loss (tutorial weighting by default) averaged over `images`, mean ± SE.

    t and z are drawn image by image from one generator seeded with `seed`, so the noise does not
    depend on the batch size or the device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    t_all = torch.rand(n, generator=generator, dtype=torch.float32) * (sde.T - eps) + eps
    z_all = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    losses = []
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        losses.append(dsm_loss(model, sde, images[part].to(device), t=t_all[part].to(device),
                               z=z_all[part].to(device), weighting=weighting, reduce=False).cpu())
    return mean_and_standard_error(torch.cat(losses))

"""Denoising score matching (Vincent 2011; Song et al. 2021, eq. (7)).

For t ~ U(eps, T), x_0 ~ data, z ~ N(0, I) and x_t = m(t) x_0 + std(t) z, the score of the
perturbation kernel is grad log p_0t(x_t | x_0) = -z / std(t), so the weighted objective

    lambda(t) |s(x_t, t) + z / std(t)|^2

is minimised by the true score grad log p_t. Two weightings:
- 'std2' (the tutorial's): lambda = std(t)^2, loss = |s std(t) + z|^2, each term of order one;
- 'likelihood': lambda = g(t)^2 (Song, Durkan, Murray & Ermon 2021), which makes the objective a
  bound on the negative log-likelihood; loss = (g / std)^2 |s std + z|^2.
`dsm_loss` sums over data dimensions and averages over the batch, as the tutorial does.
"""
from __future__ import annotations

import torch

from .sde import SDE, append_dims, normal_like

WEIGHTINGS = ("std2", "likelihood")


def dsm_loss(score_fn, sde: SDE, x0: torch.Tensor, *, eps: float = 1e-5, weighting: str = "std2",
             t: torch.Tensor | None = None, z: torch.Tensor | None = None,
             generator: torch.Generator | None = None, reduce: bool = True) -> torch.Tensor:
    """Denoising score-matching loss of `score_fn(x, t)` on a batch x0.

    t and z may be given (common random numbers for comparisons); otherwise t ~ U(eps, T) and
    z ~ N(0, I) are drawn with `generator`. Returns the batch mean, or per-sample losses (batch,)
    if reduce=False (for mean ± standard error)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    batch = x0.shape[0]
    if t is None:
        t = torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype) * (sde.T - eps) + eps
    if z is None:
        z = normal_like(x0, generator)
    x_t = sde.perturb(x0, t, z)
    std = sde.marginal_std(t)
    residual = score_fn(x_t, t) * append_dims(std, x0.ndim) + z
    per_sample = residual.pow(2).reshape(batch, -1).sum(dim=1)
    if weighting == "likelihood":
        per_sample = per_sample * (sde.diffusion(t) / std) ** 2
    return per_sample.mean() if reduce else per_sample

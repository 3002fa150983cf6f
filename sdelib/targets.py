"""What a network predicts: score, noise, data, velocity or v, as one object.

For a linear SDE (sde.py) the perturbed data are x_t = m(t) x_0 + std(t) z, z ~ N(0, I). At a fixed
(x, t) every common prediction target is an affine function of the score s = grad log p_t(x):

    target     its conditional form, given (x_0, z)     from the score s at (x, t)
    'score'    -z / std                                  s
    'noise'    z                                         z^ = -std s
    'data'     x_0                                       x0^ = (x + v s) / m          (Tweedie)
    'velocity' m' x_0 + std' z                           u = A x - g^2 s / 2          (PF drift)
    'v'        (m z - std x_0) / sqrt(m^2 + v)           -sigma~ (x / r + r s),  r = sqrt(m^2 + v)

with v = std^2, A = m'/m the drift coefficient, g the diffusion and sigma~ = std / m.

- 'noise': E[z | x_t] = -std grad log p_t (the score of the kernel is -z / std; its posterior mean
  is the score of p_t), Ho et al. (2020), Song et al. (2021, eq. 7 with the std^2 weighting).
- 'data': Tweedie's formula E[x_0 | x_t] = (x_t + v s) / m (Efron 2011).
- 'velocity': the flow-matching target E[m' x_0 + std' z | x_t = x] of the Gaussian path
  (Lipman et al. 2023, Thms. 1-3; Liu, Gong & Liu 2023) equals the probability-flow drift
  f - g^2 s / 2 of Song et al. (2021, eq. 13), because g^2 = 2 std std' - 2 A v (the variance
  equation v' = 2 A v + g^2): m' x0^ + std' z^ = A (x + v s) - std' std s = A x - g^2 s / 2.
- 'v': Salimans & Ho (2022, "progressive distillation") define v = alpha eps - sigma x for
  the variance-preserving path alpha^2 + sigma^2 = 1. For any path, write x_t / r(t) = cos(phi) x_0
  + sin(phi) z with r = sqrt(m^2 + v) and phi = arctan(sigma~): v is d(x_t / r)/d phi at fixed
  (x_0, z) = (m z - std x_0) / r, which is alpha eps - sigma x_0 where r = 1 (VP). (The book writes
  this target psi, since v is the kernel's variance.)

Every map is therefore `x_coeff(t) * x + score_coeff(t) * s` (`coefficients`), and a loss
|prediction - conditional target|^2 is score_coeff^2 |s + z / std|^2: denoising score matching
with the weighting lambda(t) = score_coeff(t)^2 (`loss_weight`; Kingma & Gao 2023, who write every
such objective as a weighted DSM loss): 1 (score), v (noise: the 'std2' weighting of
losses.dsm_loss), v^2 / m^2 (data), g^4 / 4 (velocity: the 'flow_matching' weighting), and
sigma~^2 (m^2 + v) (v-target; sigma~^2 for VP).

`t` has shape (batch,) (or is a float) and is broadcast over x's trailing dimensions with
`sde.append_dims`. Coefficients are computed in float64 and cast to the prediction's dtype.
"""
from __future__ import annotations

import torch

from .checks import check_choice, check_instance
from .sde import SDE, append_dims

__all__ = ["TARGETS", "coefficients", "from_score", "to_score", "convert", "conditional_target",
           "loss_weight"]

TARGETS = ("score", "noise", "data", "velocity", "v")


def _time(sde: SDE, t, like: torch.Tensor) -> torch.Tensor:
    """t as a float64 tensor of shape (batch,) on x's device (a float gives one t for all), in
    (0, T]: the maps divide by std(t), which is 0 at t = 0."""
    t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    if t.ndim == 0:
        t = t.expand(like.shape[0])
    if t.ndim != 1 or t.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"t must be a float or have shape (batch,) = ({like.shape[0]},), got "
                         f"{tuple(t.shape)}")
    if t.numel() and not bool(((t > 0) & (t <= sde.T + 1e-6)).all()):
        raise ValueError(f"t must lie in (0, {sde.T}] (the maps divide by std(t), 0 at t = 0), "
                         f"got values in [{t.min().item():.3g}, {t.max().item():.3g}]")
    return t


def _check(sde, target, name="target"):
    check_instance("sde", sde, SDE, "RectifiedFlowSDE()")
    check_choice(name, target, TARGETS)


def coefficients(sde: SDE, t, target: str):
    """(x_coeff, score_coeff), each of shape (batch,) in float64, with
    target(x, t) = x_coeff * x + score_coeff * s(x, t) (the table of the module docstring)."""
    _check(sde, target)
    t = torch.as_tensor(t, dtype=torch.float64)
    t = t.reshape(-1) if t.ndim == 0 else t
    m, std = sde.mean_coeff(t) * torch.ones_like(t), sde.marginal_std(t) * torch.ones_like(t)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if target == "score":
        return zero, one
    if target == "noise":
        return zero, -std
    if target == "data":
        return 1 / m, std ** 2 / m
    if target == "velocity":
        return sde.drift_coeff(t) * one, -0.5 * sde.diffusion(t) ** 2
    r = torch.sqrt(m ** 2 + std ** 2)                       # 'v'
    sigma = std / m
    return -sigma / r, -sigma * r


def _apply(sde, x, t, value, target, inverse):
    if value.shape != x.shape:
        raise ValueError(f"the prediction has shape {tuple(value.shape)}, expected x's "
                         f"{tuple(x.shape)}")
    t = _time(sde, t, x)
    a, b = (append_dims(c, x.ndim) for c in coefficients(sde, t, target))
    if inverse:                                             # s = (prediction - a x) / b
        return ((value.double() - a * x.double()) / b).to(value.dtype)
    return (a * x.double() + b * value.double()).to(value.dtype)


def from_score(sde: SDE, x: torch.Tensor, t, score: torch.Tensor, target: str) -> torch.Tensor:
    """The prediction `target` at (x, t) from a score s(x, t) (a net's or an exact one):
    'noise' -std s, 'data' (x + v s)/m (Tweedie), 'velocity' A x - g^2 s / 2 (the
    probability-flow drift), 'v' -sigma~ (x / r + r s) (Salimans & Ho's v, r = sqrt(m^2 + v))."""
    _check(sde, target)
    return _apply(sde, x, t, score, target, inverse=False)


def to_score(sde: SDE, x: torch.Tensor, t, prediction: torch.Tensor, target: str) -> torch.Tensor:
    """The score s(x, t) from a prediction of `target` at (x, t): the inverse of `from_score`
    (for 'velocity' it is `nets.score_of_velocity`)."""
    _check(sde, target)
    return _apply(sde, x, t, prediction, target, inverse=True)


def convert(sde: SDE, x: torch.Tensor, t, prediction: torch.Tensor, source: str,
            target: str) -> torch.Tensor:
    """A prediction of `source` at (x, t) as a prediction of `target`, through the score; e.g.
    for the rectified-flow path, data from velocity is x - t u and noise is x + (1 - t) u."""
    _check(sde, source, "source")
    _check(sde, target)
    return from_score(sde, x, t, to_score(sde, x, t, prediction, source), target)


def conditional_target(sde: SDE, x0: torch.Tensor, z: torch.Tensor, t, target: str) -> torch.Tensor:
    """The regression target of `target` given the data x0 and the noise z of x_t = m x0 + std z:
    'score' -z/std, 'noise' z, 'data' x0, 'velocity' m' x0 + std' z = A x_t + g^2 z / (2 std)
    (Lipman et al. 2023, Thm. 3, for a Gaussian path; z - x0 for the rectified-flow path),
    'v' (m z - std x0) / sqrt(m^2 + v). Each is `from_score` with the kernel's score -z/std in
    place of s, so |from_score(s) - conditional_target|^2 = loss_weight |s + z/std|^2."""
    _check(sde, target)
    if x0.shape != z.shape:
        raise ValueError(f"x0 and z must have the same shape, got {tuple(x0.shape)} and "
                         f"{tuple(z.shape)}")
    t = _time(sde, t, x0)
    m, std = (append_dims(c * torch.ones_like(t), x0.ndim)
              for c in (sde.mean_coeff(t), sde.marginal_std(t)))
    x0d, zd = x0.double(), z.double()
    if target == "score":
        out = -zd / std
    elif target == "noise":
        out = zd
    elif target == "data":
        out = x0d
    elif target == "velocity":
        # m' = A m and std' = (2 A v + g^2) / (2 std), from the moment equations of sde.py
        A = append_dims(sde.drift_coeff(t) * torch.ones_like(t), x0.ndim)
        g2 = append_dims(sde.diffusion(t) ** 2, x0.ndim)
        out = A * m * x0d + (A * std ** 2 + g2 / 2) / std * zd
    else:
        out = (m * zd - std * x0d) / torch.sqrt(m ** 2 + std ** 2)
    return out.to(x0.dtype)


def loss_weight(sde: SDE, t, target: str) -> torch.Tensor:
    """lambda(t) = score_coeff(t)^2, shape (batch,), float64: the DSM weighting for which
    lambda |s + z/std|^2 = |from_score(s) - conditional_target|^2 per sample (Kingma & Gao 2023):
    1, v, v^2/m^2, g^4/4 and sigma~^2 (m^2 + v) for score, noise, data, velocity and v."""
    return coefficients(sde, t, target)[1] ** 2

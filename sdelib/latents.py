"""Latent codes of the probability-flow ODE: encode, decode, interpolate, and DDIM.

The probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13) is
deterministic, so solving it forwards from t = eps to T maps a data point x to a latent code
z = x(T) ("encode"), and solving it backwards maps z back to x ("decode"): an invertible map up
to the solver's error, as in a continuous normalising flow (Chen et al. 2018).

Latent codes of a Gaussian prior N(0, s^2 I) in D dimensions concentrate near the sphere of
radius s sqrt(D). Linear interpolation between two such codes cuts inside the sphere (its midpoint
between orthogonal codes has norm 1/sqrt(2) of theirs); spherical interpolation (`slerp`, Shoemake
1985) walks along the great circle and keeps the norm.

DDIM (Song, Meng & Ermon 2021, eq. 12 with sigma_t = 0, i.e. eta = 0) is, in the variables
y = x / m(t) and sigma~ = std(t) / m(t) of Karras et al. (2022, eq. 4), exactly one Euler step of
the probability-flow ODE dy/dsigma~ = -sigma~ m s(m y, t):

    x_{i+1} = m_{i+1} x0_hat + std_{i+1} eps_hat,   x0_hat = (x_i - std_i eps_hat) / m_i,
    eps_hat = -std_i s(x_i, t_i)
    <=>  y_{i+1} = y_i + (sigma~_{i+1} - sigma~_i) eps_hat,   eps_hat = -sigma~_i m_i s.

`ddim` writes the update in DDIM's own form (alpha_bar = m^2 for the VP SDE; for any linear SDE
with its m and std), so it can be checked against `samplers.edm_stochastic(order=1, churn=0)`.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .checks import (check_data, check_eps, check_instance, check_positive_int, check_real,
                     check_tensor, checked_score_fn, check_callable)
from .ode import check_solver, solve
from .samplers import SamplerResult, heun_time_grid, probability_flow_ode
from .sde import SDE, append_dims

__all__ = ["LatentResult", "encode", "decode", "slerp", "lerp", "ddim"]


class LatentResult(NamedTuple):
    z: torch.Tensor          # x(T): the data mapped to the prior by the probability-flow ODE
    nfe: int


def _check_ode_arguments(score_fn, sde, eps, rtol, atol, solver, method, max_nfe):
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    check_callable("score_fn", score_fn)
    check_solver(solver, method)
    eps = check_eps(eps, sde, score_fn)
    rtol = check_real("rtol", rtol, low=0.0, low_open=True)
    atol = check_real("atol", atol, low=0.0, low_open=True)
    return eps, rtol, atol, check_positive_int("max_nfe", max_nfe)


def encode(score_fn, sde: SDE, x: torch.Tensor, *, eps: float | None = None, rtol: float = 1e-5,
           atol: float = 1e-5, solver: str = "scipy", method: str | None = None,
           max_nfe: int = 20_000) -> LatentResult:
    """The latent code z = x(T) of data x = x(eps): the probability-flow ODE (Song et al. 2021,
    eq. 13) solved forwards from t = eps to T with `ode.solve` (solver and tolerances as in
    `samplers.probability_flow_ode`). Returns (z, nfe)."""
    eps, rtol, atol, max_nfe = _check_ode_arguments(score_fn, sde, eps, rtol, atol, solver,
                                                    method, max_nfe)
    check_data("x", x)
    score_fn = checked_score_fn(score_fn)
    drift = sde.reverse(score_fn, probability_flow=True).drift
    (z,), nfe = solve(lambda state, t_vec: (drift(state[0], t_vec),), (x.detach(),), eps, sde.T,
                      solver=solver, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe,
                      what="encoding ODE")
    if not bool(torch.isfinite(z).all()):
        raise FloatingPointError("encode: the latent codes are NaN or infinite")
    return LatentResult(z, nfe)


def decode(score_fn, sde: SDE, z: torch.Tensor, *, eps: float | None = None, rtol: float = 1e-5,
           atol: float = 1e-5, solver: str = "scipy", method: str | None = None,
           max_nfe: int = 20_000) -> SamplerResult:
    """The data x(eps) of latent codes z = x(T): the probability-flow ODE from T down to eps
    (`samplers.probability_flow_ode` started at x_init = z), the inverse of `encode` up to the
    solvers' error. Returns (samples, nfe)."""
    eps, rtol, atol, max_nfe = _check_ode_arguments(score_fn, sde, eps, rtol, atol, solver,
                                                    method, max_nfe)
    check_data("z", z)
    return probability_flow_ode(score_fn, sde, z.shape, eps=eps, rtol=rtol, atol=atol,
                                solver=solver, method=method, max_nfe=max_nfe, x_init=z,
                                device=z.device)


def _check_pair(z0, z1, w):
    check_data("z0", z0)
    check_data("z1", z1)
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and "
                         f"{tuple(z1.shape)}")
    return check_real("w", w, low=0.0, high=1.0)


def lerp(z0: torch.Tensor, z1: torch.Tensor, w: float) -> torch.Tensor:
    """Linear interpolation (1 - w) z0 + w z1, w in [0, 1] (the comparison for `slerp`)."""
    w = _check_pair(z0, z1, w)
    return (1 - w) * z0 + w * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation between batches of codes z0, z1 of shape (batch, ...), w in [0, 1]:

        slerp = sin((1 - w) theta) / sin(theta) z0 + sin(w theta) / sin(theta) z1,

    theta the angle between z0[i] and z1[i] (over all but the batch dimension). It moves along
    the great circle through them: for codes of equal norm the norm is kept at every w; w = 0
    and w = 1 return z0 and z1 exactly. Nearly parallel codes (sin theta < 1e-7) fall back to
    linear interpolation, its limit."""
    w = _check_pair(z0, z1, w)
    if w == 0.0:
        return z0.clone()
    if w == 1.0:
        return z1.clone()
    a, b = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    parallel = sin < 1e-7
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    c0 = torch.where(parallel, torch.full_like(sin, 1 - w), torch.sin((1 - w) * theta) / safe)
    c1 = torch.where(parallel, torch.full_like(sin, w), torch.sin(w * theta) / safe)
    return append_dims(c0, z0.ndim) * z0 + append_dims(c1, z0.ndim) * z1


@torch.no_grad()
def ddim(score_fn, sde: SDE, x_init: torch.Tensor, times=None, *, steps: int = 25,
         eps: float | None = None, rho: float = 7.0) -> SamplerResult:
    """Deterministic DDIM (Song, Meng & Ermon 2021, eq. 12 with eta = 0) from x_init at t = T,
    written in DDIM's variables: with alpha_bar(t) = m(t)^2 and std(t) = sqrt(1 - alpha_bar) for
    the VP SDE (for any linear SDE here: m(t) and std(t)),

        eps_hat = -std_i s(x_i, t_i),          x0_hat = (x_i - std_i eps_hat) / m_i,
        x_{i+1} = m_{i+1} x0_hat + std_{i+1} eps_hat,

    on `times` (decreasing, from T; default `samplers.heun_time_grid(sde, steps, eps, rho)`, the
    grid of `edm_stochastic`; explicit times must end at or above the model's training eps, as
    `eps` must). One score evaluation per step; this equals `edm_stochastic(...,
    order=1, churn=0.0)` up to round-off (module docstring)."""
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    check_callable("score_fn", score_fn)
    check_data("x_init", x_init)
    if times is None:
        steps = check_positive_int("steps", steps)
        eps = check_eps(eps, sde, score_fn)
        times = heun_time_grid(sde, steps, eps, check_real("rho", rho, low=0.0, low_open=True))
    check_tensor("times", times)
    if times.ndim != 1 or len(times) < 2 or not bool((times[1:] < times[:-1]).all()):
        raise ValueError("times must be a 1-D tensor of at least 2 decreasing times")
    trained = getattr(score_fn, "trained_eps", None)
    if trained is not None and float(times[-1]) < trained * (1 - 1e-9):
        raise ValueError(f"times end at t={float(times[-1]):g}, below eps={trained:g}, the "
                         f"smallest time this model was trained on: end the grid at t >= {trained:g}")
    score_fn = checked_score_fn(score_fn)
    times = times.to(torch.float64)
    means, stds = sde.mean_coeff(times), sde.marginal_std(times)
    to = dict(device=x_init.device, dtype=x_init.dtype)
    x = x_init
    for i in range(len(times) - 1):
        t_vec = times[i].to(**to).expand(x.shape[0])
        eps_hat = -stds[i].to(**to) * score_fn(x, t_vec)
        x0_hat = (x - stds[i].to(**to) * eps_hat) / means[i].to(**to)
        x = means[i + 1].to(**to) * x0_hat + stds[i + 1].to(**to) * eps_hat
    return SamplerResult(x, len(times) - 1)

"""Samplers: plain functions that integrate the reverse-time SDE or the probability-flow ODE.

All share one signature,

    sampler(score_fn, sde, shape, *, steps=..., eps=1e-3, generator=None, callback=None,
            denoise=False, x_init=None, device=None, ...) -> SamplerResult(samples, nfe)

- `score_fn(x, t)` is any score: a trained net or an exact score of toy data;
- time runs from T = 1 down to `eps`; `x_init` (default: a draw from the prior) starts it;
- `generator` seeds every random draw; the device is the generator's, else `device`, else cpu;
- `callback(i, t, x)` is called after each step (for trajectories and progress bars);
- `nfe` counts score evaluations; `denoise=True` adds one Tweedie step at the end (SPEC §3):
  x0_hat = (x + std(eps)^2 s(x, eps)) / m(eps), the posterior mean of x_0, one more evaluation.

Song et al. (2021): Euler–Maruyama on the reverse SDE eq. (6); predictor–corrector Alg. 1 with the
Langevin corrector Alg. 5 (alpha_i for VP-type SDEs) and the reverse-diffusion predictor eq. (47);
probability-flow ODE eq. (13) with RK45 (scipy, as the tutorial) or dopri5 (torchdiffeq, batched on
the device).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np
import torch

from .sde import SDE, append_dims


class SamplerResult(NamedTuple):
    samples: torch.Tensor
    nfe: int


class ODEConvergenceError(RuntimeError):
    """The adaptive ODE solver failed or exceeded its evaluation budget."""


class CountedDrift:
    """Wraps fn(x, t_vec) for an adaptive solver: counts evaluations (`nfe`) and raises
    ODEConvergenceError past `max_nfe` or on a non-finite value, so a solve reports, never hangs."""

    def __init__(self, fn, max_nfe: int, what: str = "probability-flow ODE"):
        self.fn, self.max_nfe, self.what, self.nfe = fn, max_nfe, what, 0

    def __call__(self, x, t_vec):
        self.nfe += 1
        t = float(t_vec[0])
        if self.nfe > self.max_nfe:
            raise ODEConvergenceError(f"{self.what} needed more than {self.max_nfe} evaluations; "
                                      f"stopped at t={t:.4g} (loosen rtol/atol or check the score)")
        out = self.fn(x, t_vec)
        if not all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else (out,))):
            raise ODEConvergenceError(f"{self.what} drift is not finite at t={t:.4g}")
        return out


PREDICTORS = ("euler_maruyama", "reverse_diffusion")


def _check_common(shape, steps, eps, sde: SDE) -> None:
    if len(shape) < 2:
        raise ValueError(f"shape must be (batch, ...data dims), got {tuple(shape)}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")


def _start(sde: SDE, shape, generator, device, x_init):
    device = generator.device if generator is not None else torch.device(device or "cpu")
    if x_init is not None:
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
        return x_init.to(device), device
    return sde.prior_sampling(shape, generator=generator, device=device), device


def _noise(x, generator):
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def tweedie_denoise(score_fn, sde: SDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + std(t)^2 grad log p_t(x_t)) / m(t) (Tweedie's formula)."""
    t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    std = append_dims(sde.marginal_std(t_vec), x.ndim)
    mean_coeff = append_dims(sde.mean_coeff(t_vec), x.ndim)
    return (x + std ** 2 * score_fn(x, t_vec)) / mean_coeff


@torch.no_grad()
def euler_maruyama(score_fn, sde: SDE, shape, *, steps: int = 500, eps: float = 1e-3,
                   generator=None, callback: Callable | None = None, denoise: bool = False,
                   x_init=None, device=None) -> SamplerResult:
    """Euler–Maruyama on the reverse SDE, t_i = linspace(T, eps, steps), dt = t_0 - t_1:

        x_mean = x - [f(x, t) - g(t)^2 s(x, t)] dt,    x = x_mean + g(t) sqrt(dt) z,

    returning x_mean of the last step (no noise added at the end), as the tutorial does."""
    _check_common(shape, steps, eps, sde)
    x, device = _start(sde, shape, generator, device, x_init)
    reverse = sde.reverse(score_fn)
    times = torch.linspace(sde.T, eps, steps, device=device, dtype=x.dtype)
    dt = (sde.T - eps) / (steps - 1) if steps > 1 else sde.T - eps
    x_mean = x
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        x_mean = x - reverse.drift(x, t_vec) * dt
        x = x_mean + append_dims(reverse.diffusion(t_vec), x.ndim) * math.sqrt(dt) * _noise(x, generator)
        if callback is not None:
            callback(i, t.item(), x_mean)
    nfe = steps
    if denoise:
        x_mean, nfe = tweedie_denoise(score_fn, sde, x_mean, eps), nfe + 1
    return SamplerResult(x_mean, nfe)


def langevin_corrector_step(score_fn, sde: SDE, x, t_vec, dt, snr, generator):
    """One Langevin step x <- x + e s + sqrt(2 e) z with e = 2 alpha (snr ||z|| / ||s||)^2,
    ||z|| = sqrt(D) and ||s|| the per-sample L2 norm of the score averaged over the batch
    (tutorial; paper Alg. 5, alpha_i = 1 - beta_i for VP-type SDEs, 1 for VE)."""
    grad = score_fn(x, t_vec)
    grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=-1).mean()
    noise_norm = math.sqrt(x[0].numel())
    alpha = append_dims(sde.langevin_alpha(t_vec, dt), x.ndim)
    step = 2 * alpha * (snr * noise_norm / grad_norm) ** 2
    return x + step * grad + torch.sqrt(2 * step) * _noise(x, generator)


@torch.no_grad()
def predictor_corrector(score_fn, sde: SDE, shape, *, steps: int = 500, snr: float = 0.16,
                        eps: float = 1e-3, predictor: str = "euler_maruyama", corrector_steps: int = 1,
                        generator=None, callback: Callable | None = None, denoise: bool = False,
                        x_init=None, device=None) -> SamplerResult:
    """Predictor–corrector sampling (paper Alg. 1). At each t_i the tutorial's order: first
    `corrector_steps` Langevin steps at signal-to-noise ratio `snr`, then one predictor step:
    'euler_maruyama' (the tutorial's default) or 'reverse_diffusion' (the paper's, eq. (47):
    x_mean = x - f_i + G_i^2 s, x = x_mean + G_i z with (f_i, G_i) = sde.discretize).
    Returns the last x_mean; nfe = steps * (1 + corrector_steps)."""
    _check_common(shape, steps, eps, sde)
    if not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS}")
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    x, device = _start(sde, shape, generator, device, x_init)
    reverse = sde.reverse(score_fn)
    times = torch.linspace(sde.T, eps, steps, device=device, dtype=x.dtype)
    dt = (sde.T - eps) / (steps - 1) if steps > 1 else sde.T - eps
    x_mean = x
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        for _ in range(corrector_steps):
            x = langevin_corrector_step(score_fn, sde, x, t_vec, dt, snr, generator)
        if predictor == "euler_maruyama":
            x_mean = x - reverse.drift(x, t_vec) * dt
            noise_scale = append_dims(reverse.diffusion(t_vec), x.ndim) * math.sqrt(dt)
        else:
            f, G = sde.discretize(x, t_vec, dt)
            G = append_dims(G, x.ndim)
            x_mean = x - f + G ** 2 * score_fn(x, t_vec)
            noise_scale = G
        x = x_mean + noise_scale * _noise(x, generator)
        if callback is not None:
            callback(i, t.item(), x_mean)
    nfe = steps * (1 + corrector_steps)
    if denoise:
        x_mean, nfe = tweedie_denoise(score_fn, sde, x_mean, eps), nfe + 1
    return SamplerResult(x_mean, nfe)


def probability_flow_ode(score_fn, sde: SDE, shape, *, eps: float = 1e-3, rtol: float = 1e-5,
                         atol: float = 1e-5, method: str = "RK45", max_nfe: int = 20_000,
                         generator=None, callback: Callable | None = None, denoise: bool = False,
                         x_init=None, device=None, steps=None) -> SamplerResult:
    """The probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (eq. 13) from T to eps with
    scipy's adaptive solver (RK45 as the tutorial), the whole batch as one float64 state vector.

    `steps` is unused (adaptive); `max_nfe` bounds the work: a solver failure or an exhausted
    budget raises ODEConvergenceError instead of hanging."""
    from scipy import integrate

    _check_common(shape, None, eps, sde)
    x, device = _start(sde, shape, generator, device, x_init)
    drift = CountedDrift(sde.reverse(score_fn, probability_flow=True).drift, max_nfe)
    dtype = x.dtype

    def ode_func(t, y):
        x_t = torch.as_tensor(y, device=device, dtype=dtype).reshape(shape)
        with torch.no_grad():
            out = drift(x_t, torch.full((shape[0],), t, device=device, dtype=dtype))
        return out.reshape(-1).double().cpu().numpy()

    solver_cls = {"RK45": integrate.RK45, "RK23": integrate.RK23, "DOP853": integrate.DOP853}[method]
    solver = solver_cls(ode_func, sde.T, x.reshape(-1).double().cpu().numpy(), eps, rtol=rtol, atol=atol)
    i = 0
    while solver.status == "running":
        message = solver.step()
        if solver.status == "failed":
            raise ODEConvergenceError(f"probability-flow ODE failed at t={solver.t:.4g}: {message}")
        if callback is not None:
            callback(i, solver.t, torch.as_tensor(solver.y, dtype=dtype, device=device).reshape(shape))
        i += 1
    x, nfe = torch.as_tensor(solver.y, device=device, dtype=dtype).reshape(shape), drift.nfe
    if denoise:
        with torch.no_grad():
            x = tweedie_denoise(score_fn, sde, x, eps)
        nfe += 1
    return SamplerResult(x, nfe)


def probability_flow_ode_torchdiffeq(score_fn, sde: SDE, shape, *, eps: float = 1e-3,
                                     rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5",
                                     max_nfe: int = 20_000, generator=None,
                                     callback: Callable | None = None, denoise: bool = False,
                                     x_init=None, device=None, steps=None) -> SamplerResult:
    """The same ODE with torchdiffeq's adaptive dopri5 (RK45's Dormand–Prince pair), batched and on
    the tensors' device, in their dtype (use float64 for tight tolerances on toy data)."""
    from torchdiffeq import odeint

    _check_common(shape, None, eps, sde)
    x, device = _start(sde, shape, generator, device, x_init)
    drift = CountedDrift(sde.reverse(score_fn, probability_flow=True).drift, max_nfe)

    def ode_func(t, x_t):
        # dopri5's first-step heuristic may probe beyond the interval: keep t inside (0, T].
        t = t.clamp(min=eps, max=sde.T)
        out = drift(x_t, t.expand(shape[0]).to(x_t.dtype))
        if callback is not None:
            callback(drift.nfe - 1, float(t), x_t)
        return out

    times = torch.tensor([sde.T, eps], device=device, dtype=x.dtype)
    with torch.no_grad():
        try:
            x = odeint(ode_func, x, times, rtol=rtol, atol=atol, method=method)[-1]
        except AssertionError as exc:  # torchdiffeq asserts on step-size underflow / non-finite steps
            raise ODEConvergenceError(f"probability-flow ODE failed after {drift.nfe} evaluations: {exc}") from exc
        nfe = drift.nfe
        if denoise:
            x, nfe = tweedie_denoise(score_fn, sde, x, eps), nfe + 1
    return SamplerResult(x, nfe)

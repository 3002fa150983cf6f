"""Samplers: plain functions that integrate the reverse-time SDE or the probability-flow ODE.

All share one signature,

    sampler(score_fn, sde, shape, *, steps=..., eps=1e-3, generator=None, callback=None,
            denoise=False, x_init=None, device=None, ...) -> SamplerResult(samples, nfe)

- `score_fn(x, t)` is any score: a trained net or an exact score of toy data;
- time runs from T = 1 down to `eps`; `x_init` (default: a draw from the prior) starts it;
- `generator` seeds every random draw; the device is the generator's, else `device`, else cpu;
- `callback(i, t, x)` is for trajectories and progress bars. Fixed-step samplers call it after
  each step i with that step's x_mean; the scipy ODE after each *accepted* adaptive step with its
  state; the torchdiffeq ODE at each drift *evaluation* (torchdiffeq has no step hook, so this
  includes the Runge–Kutta stages and rejected trial steps, at times that are not monotone);
- `nfe` counts score evaluations; `denoise=True` adds one Tweedie step at the end (SPEC §3):
  x0_hat = (x + std(eps)^2 s(x, eps)) / m(eps), the posterior mean of x_0, one more evaluation.

Song et al. (2021): Euler–Maruyama on the reverse SDE eq. (6); predictor–corrector Alg. 1 with the
Langevin corrector Alg. 5 (alpha_i for VP-type SDEs) and the reverse-diffusion predictor eq. (47);
probability-flow ODE eq. (13) with RK45 (scipy, as the tutorial) or dopri5 (torchdiffeq, batched on
the device); and a few-step deterministic solver of the same ODE, Heun's 2nd-order method on the
time grid of Karras et al. (2022, "EDM", Alg. 1 and eq. 5), `heun_ode`; EDM's stochastic sampler
on the same grid (Alg. 2: fresh noise before each Heun or Euler step), `edm_stochastic`; and
SDE-DPM-Solver++ (Lu et al. 2022; exact steps of the reverse SDE for a fixed denoiser, second order
by reusing the previous evaluation), `dpm_solver_sde`.

Controllable generation (paper §5, Appendix I): `inpaint` fills unknown pixels by the replacement
method (EM or PC, the known pixels replaced at every step by the observation diffused to the
current time), and `classifier_guided_score` adds strength * grad_x log p_t(y | x) of a
noise-conditional classifier to any score, for any sampler above (eq. 14, with a guidance scale).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .sde import SDE, append_dims, normal_like


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


def _time_grid(sde: SDE, steps: int, eps: float, device=None, dtype=torch.float32):
    """The fixed-step samplers' times t_i = linspace(T, eps, steps) and step dt = t_0 - t_1."""
    times = torch.linspace(sde.T, eps, steps, device=device, dtype=dtype)
    return times, ((sde.T - eps) / (steps - 1) if steps > 1 else sde.T - eps)


def tweedie_denoise(score_fn, sde: SDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + std(t)^2 grad log p_t(x_t)) / m(t) (Tweedie's formula)."""
    t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    std = append_dims(sde.marginal_std(t_vec), x.ndim)
    mean_coeff = append_dims(sde.mean_coeff(t_vec), x.ndim)
    return (x + std ** 2 * score_fn(x, t_vec)) / mean_coeff


def _euler_maruyama_step(reverse, x, t_vec, dt):
    """The mean x - [f - g^2 s] dt of one reverse Euler–Maruyama step and its noise scale g sqrt(dt)."""
    return x - reverse.drift(x, t_vec) * dt, append_dims(reverse.diffusion(t_vec), x.ndim) * math.sqrt(dt)


@torch.no_grad()
def euler_maruyama(score_fn, sde: SDE, shape, *, steps: int = 500, eps: float = 1e-3,
                   generator=None, callback: Callable | None = None, denoise: bool = False,
                   x_init=None, device=None) -> SamplerResult:
    """Euler–Maruyama on the reverse SDE, t_i = linspace(T, eps, steps), dt = t_0 - t_1:

        x_mean = x - [f(x, t) - g(t)^2 s(x, t)] dt,    x = x_mean + g(t) sqrt(dt) z,

    returning x_mean of the last step (no noise added at the end), as the tutorial does. As in
    the tutorial, step i evaluates at t_i and moves by dt, so the last step (at t = eps) ends
    nominally at eps - dt: the steps sample [eps, T] on the grid's left end points."""
    _check_common(shape, steps, eps, sde)
    x, device = _start(sde, shape, generator, device, x_init)
    reverse = sde.reverse(score_fn)
    times, dt = _time_grid(sde, steps, eps, device, x.dtype)
    x_mean = x
    for i, t in enumerate(times):
        x_mean, noise_scale = _euler_maruyama_step(reverse, x, t.expand(shape[0]), dt)
        x = x_mean + noise_scale * normal_like(x, generator)
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
    return x + step * grad + torch.sqrt(2 * step) * normal_like(x, generator)


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
    times, dt = _time_grid(sde, steps, eps, device, x.dtype)
    x_mean = x
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        for _ in range(corrector_steps):
            x = langevin_corrector_step(score_fn, sde, x, t_vec, dt, snr, generator)
        if predictor == "euler_maruyama":
            x_mean, noise_scale = _euler_maruyama_step(reverse, x, t_vec, dt)
        else:
            f, G = sde.discretize(x, t_vec, dt)
            G = append_dims(G, x.ndim)
            x_mean = x - f + G ** 2 * score_fn(x, t_vec)
            noise_scale = G
        x = x_mean + noise_scale * normal_like(x, generator)
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


def scaled_std(sde: SDE, t: torch.Tensor) -> torch.Tensor:
    """sigma~(t) = std(t) / m(t): the noise level of x / m(t) = x_0 + sigma~(t) z (EDM eq. 4)."""
    return sde.marginal_std(t) / sde.mean_coeff(t)


def time_of_scaled_std(sde: SDE, sigma: torch.Tensor, eps: float, iterations: int = 60) -> torch.Tensor:
    """The t in [eps, T] with scaled_std(t) = sigma, by bisection (scaled_std increases with t);
    after 60 halvings the bracket is T 2^-60, below float64 resolution."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    low = torch.full_like(sigma, eps)
    high = torch.full_like(sigma, sde.T)
    for _ in range(iterations):
        mid = (low + high) / 2
        above = scaled_std(sde, mid) > sigma
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    return (low + high) / 2


def heun_time_grid(sde: SDE, steps: int, eps: float = 1e-3, rho: float = 7.0) -> torch.Tensor:
    """steps + 1 times from T to eps whose noise levels follow EDM eq. (5):
    sigma_i = (sigma_max^(1/rho) + i/steps (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    with sigma = scaled_std: steps crowd where the noise is small and the score changes fast."""
    ends = scaled_std(sde, torch.tensor([sde.T, eps], dtype=torch.float64))
    fraction = torch.arange(steps + 1, dtype=torch.float64) / steps
    sigma = (ends[0] ** (1 / rho) + fraction * (ends[1] ** (1 / rho) - ends[0] ** (1 / rho))) ** rho
    times = time_of_scaled_std(sde, sigma, eps)
    times[0], times[-1] = sde.T, eps                        # exact end points
    return times


@torch.no_grad()
def heun_ode(score_fn, sde: SDE, shape, *, steps: int = 18, eps: float = 1e-3, rho: float = 7.0,
             generator=None, callback: Callable | None = None, denoise: bool = False,
             x_init=None, device=None) -> SamplerResult:
    """The probability-flow ODE (eq. 13) in `steps` Heun steps (EDM Alg. 1, 2 * steps evaluations).

    It integrates the same ODE written for y = x / m(t) against sigma = std(t) / m(t) (EDM eq. 4),
    dy/dsigma = -sigma m(t) s(m(t) y, t), which is the probability-flow ODE of every linear SDE here
    and is close to linear in sigma, so few steps suffice. The times come from `heun_time_grid`.
    It is `edm_stochastic` without noise (churn 0), whose loop holds the Heun step."""
    return edm_stochastic(score_fn, sde, shape, steps=steps, order=2, eps=eps, rho=rho, churn=0.0,
                          generator=generator, callback=callback, denoise=denoise, x_init=x_init, device=device)


@torch.no_grad()
def edm_stochastic(score_fn, sde: SDE, shape, *, steps: int = 25, order: int = 2, eps: float = 1e-3,
                   rho: float = 7.0, churn: float = 30.0, churn_sigma_min: float = 0.0,
                   churn_sigma_max: float = math.inf, noise_inflation: float = 1.0, generator=None,
                   callback: Callable | None = None, denoise: bool = False, x_init=None,
                   device=None) -> SamplerResult:
    """The stochastic sampler of Karras et al. (2022, "EDM", Alg. 2) on the grid of `heun_ode`:
    before each step, fresh noise raises the noise level by a factor 1 + gamma_i,

        gamma_i = min(churn / steps, sqrt(2) - 1) where churn_sigma_min <= sigma_i <= churn_sigma_max,
        sigma^_i = sigma_i (1 + gamma_i),  y^ = y + sqrt(sigma^_i^2 - sigma_i^2) noise_inflation z,

    then one step of the probability-flow ODE from sigma^_i down to sigma_{i+1} (sigma = std/m,
    y = x / m as in `heun_ode`): Heun's (order 2, the paper's) or Euler's (order 1). Adding noise
    and integrating it back out is a Langevin-like correction that repairs score errors the ODE
    alone carries to t = eps; churn = 0 with order 2 is `heun_ode` (which calls this). steps * order
    evaluations; sigma^ never exceeds sigma(T)."""
    _check_common(shape, steps, eps, sde)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order!r}")
    if not churn >= 0 or not noise_inflation > 0 or not churn_sigma_min <= churn_sigma_max:
        raise ValueError(f"need churn >= 0 (got {churn}), noise_inflation > 0 (got {noise_inflation}) and "
                         f"churn_sigma_min <= churn_sigma_max (got {churn_sigma_min}, {churn_sigma_max})")
    x, device = _start(sde, shape, generator, device, x_init)
    times64 = heun_time_grid(sde, steps, eps, rho)
    sigmas64 = scaled_std(sde, times64)
    gamma = min(churn / steps, math.sqrt(2) - 1)
    churned = (sigmas64[:-1] >= churn_sigma_min) & (sigmas64[:-1] <= churn_sigma_max)
    sigma_hat64 = torch.where(churned, sigmas64[:-1] * (1 + gamma), sigmas64[:-1]).clamp(max=sigmas64[0])
    raised = sigma_hat64 > sigmas64[:-1]
    time_hat64 = times64[:-1].clone()
    if bool(raised.any()):
        time_hat64[raised] = time_of_scaled_std(sde, sigma_hat64[raised], eps)
    to = dict(device=device, dtype=x.dtype)
    times, sigmas, means = times64.to(**to), sigmas64.to(**to), sde.mean_coeff(times64).to(**to)
    time_hat, sigma_hat, mean_hat = time_hat64.to(**to), sigma_hat64.to(**to), sde.mean_coeff(time_hat64).to(**to)

    def slope(y, t, sigma, mean):
        return -sigma * mean * score_fn(mean * y, t.expand(shape[0]))

    y = x / means[0]
    for i in range(steps):
        y_hat = y
        if raised[i]:                                        # churn: raise the noise level first
            extra = (sigma_hat[i] ** 2 - sigmas[i] ** 2).sqrt() * noise_inflation
            y_hat = y + extra * normal_like(y, generator)
        d = slope(y_hat, time_hat[i], sigma_hat[i], mean_hat[i])
        h = sigmas[i + 1] - sigma_hat[i]
        y = y_hat + h * d
        if order == 2:
            y = y_hat + h * (d + slope(y, times[i + 1], sigmas[i + 1], means[i + 1])) / 2
        if callback is not None:
            callback(i, times[i + 1].item(), means[i + 1] * y)
    x, nfe = means[-1] * y, order * steps
    if denoise:
        x, nfe = tweedie_denoise(score_fn, sde, x, eps), nfe + 1
    return SamplerResult(x, nfe)


@torch.no_grad()
def dpm_solver_sde(score_fn, sde: SDE, shape, *, steps: int = 50, order: int = 2, eta: float = 1.0,
                   eps: float = 1e-3, rho: float = 7.0, generator=None, callback: Callable | None = None,
                   denoise: bool = False, x_init=None, device=None) -> SamplerResult:
    """SDE-DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", sec. 5: the 1S and 2M solvers of the
    reverse SDE in data prediction), one evaluation per step, on the grid of `heun_ode`.

    With y = x / m(t) = x_0 + sigma z (sigma = std / m, EDM eq. 4), the denoiser
    D_i = y_i + sigma_i^2 m s(m y_i, t_i) (Tweedie: the posterior mean of x_0) and
    h_i = log(sigma_i / sigma_{i+1}), one step is the reverse SDE solved exactly with D held fixed:

        y_{i+1} = (sigma_{i+1} / sigma_i) e^{-eta h_i} y_i + (1 - e^{-(1 + eta) h_i}) D~_i
                  + sigma_{i+1} sqrt(1 - e^{-2 eta h_i}) z,

    D~_i = D_i (order 1) or D_i + (D_i - D_{i-1}) / (2 r_i) with r_i = h_{i-1} / h_i (order 2, the
    multistep "2M": the previous step's D gives the slope; the first step is first order).
    The step is exact (for fixed D) for the reverse-time SDE with drift f - (1 + eta)/2 g^2 s and
    diffusion sqrt(eta) g, which has the marginals p_t for every eta >= 0: eta = 1 is eq. (6) (order 1
    then takes the exact posterior q(y_{i+1} | y_i, x_0 = D_i), ancestral sampling); eta = 0 the
    probability-flow ODE (DPM-Solver++(2M); like `heun_ode` it carries the score's errors to t = eps);
    eta > 1 is eq. (6) plus Langevin dynamics for p_t (x + e s + sqrt(2 e) z, the corrector's move)
    with e = (eta - 1) g^2 |dt| / 2: a corrector that costs no evaluation. If D is exact and
    constant the step keeps y = x_0 + sigma z exactly (mean x_0, variance sigma^2) for every eta."""
    _check_common(shape, steps, eps, sde)
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    if not eta >= 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x, device = _start(sde, shape, generator, device, x_init)
    times64 = heun_time_grid(sde, steps, eps, rho)
    sigmas64, means64 = scaled_std(sde, times64), sde.mean_coeff(times64)
    h = torch.log(sigmas64[:-1] / sigmas64[1:])                # h_i, float64
    to = dict(device=device, dtype=x.dtype)
    times, sigmas, means = times64.to(**to), sigmas64.to(**to), means64.to(**to)
    keep = ((sigmas64[1:] / sigmas64[:-1]) * torch.exp(-eta * h)).to(**to)
    toward = (-torch.expm1(-(1 + eta) * h)).to(**to)
    noise = (sigmas64[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))).to(**to)
    y, previous = x / means[0], None
    for i in range(steps):
        denoised = y + sigmas[i] ** 2 * means[i] * score_fn(means[i] * y, times[i].expand(shape[0]))
        target = denoised
        if order == 2 and previous is not None:
            target = denoised + (denoised - previous) * (h[i] / h[i - 1]).item() / 2
        y = keep[i] * y + toward[i] * target
        if eta > 0:
            y = y + noise[i] * normal_like(y, generator)
        previous = denoised
        if callback is not None:
            callback(i, times[i + 1].item(), means[i + 1] * y)
    x, nfe = means[-1] * y, steps
    if denoise:
        x, nfe = tweedie_denoise(score_fn, sde, x, eps), nfe + 1
    return SamplerResult(x, nfe)


# ------------------------------------------------------------------------------------------------
# Controllable generation
# ------------------------------------------------------------------------------------------------
def _check_mask(mask: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask)
    if mask.shape != observation.shape and mask.shape != observation.shape[1:]:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected the observation's "
                         f"{tuple(observation.shape)} or one sample's {tuple(observation.shape[1:])}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must be binary: 1 where the pixel is known, 0 where it is to be filled")
    return mask.to(observation.device, observation.dtype)


@torch.no_grad()
def inpaint(score_fn, sde: SDE, observation: torch.Tensor, mask: torch.Tensor, *, steps: int = 500,
            eps: float = 1e-3, snr: float | None = None, corrector_steps: int = 1, generator=None,
            callback: Callable | None = None, x_init=None) -> SamplerResult:
    """Fill the pixels where `mask` is 0 given `observation` where it is 1 (the replacement method,
    Song et al. 2021, Appendix I.2): run the reverse SDE for all pixels and, at the start and after
    every step, replace the known ones by the observation diffused to that time,
    m(t) y + std(t) z (fresh z each time). `snr=None` uses Euler–Maruyama steps; a number adds the
    Langevin corrector of `predictor_corrector` before each step. Returns the known pixels exactly
    and the last x_mean elsewhere.

    The replacement method is an approximation: the unknown pixels see the known ones only through
    noisy copies, never the conditional score grad log p_t(x_unknown | y). The book measures its
    bias on 2-D Gaussians, where the exact conditional is known."""
    observation = torch.as_tensor(observation)
    shape = tuple(observation.shape)
    _check_common(shape, steps, eps, sde)
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    if not torch.isfinite(observation).all():
        raise ValueError("observation contains NaN or infinite values")
    device = generator.device if generator is not None else observation.device
    observation = observation.to(device)
    mask = _check_mask(mask, observation)
    x, _ = _start(sde, shape, generator, device, x_init)
    x = x.to(observation.dtype)
    reverse = sde.reverse(score_fn)
    times, dt = _time_grid(sde, steps, eps, device, x.dtype)

    def known_at(t):
        t_vec = t.expand(shape[0])
        mean = append_dims(sde.mean_coeff(t_vec), x.ndim) * observation
        return mean, mean + append_dims(sde.marginal_std(t_vec), x.ndim) * normal_like(x, generator)

    x = mask * known_at(times[0])[1] + (1 - mask) * x
    x_mean, nfe = x, 0
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        if snr is not None:
            for _ in range(corrector_steps):
                x = langevin_corrector_step(score_fn, sde, x, t_vec, dt, snr, generator)
                x = mask * known_at(t)[1] + (1 - mask) * x
                nfe += 1
        x_mean, noise_scale = _euler_maruyama_step(reverse, x, t_vec, dt)
        x = x_mean + noise_scale * normal_like(x, generator)
        nfe += 1
        if i + 1 < steps:
            known_mean, known = known_at(times[i + 1])
            x = mask * known + (1 - mask) * x
            x_mean = mask * known_mean + (1 - mask) * x_mean
        if callback is not None:
            callback(i, t.item(), x_mean)
    return SamplerResult(mask * observation + (1 - mask) * x_mean, nfe)


def classifier_guided_score(score_fn, classifier, label, strength: float = 1.0, num_classes: int = 10):
    """s(x, t) + strength * grad_x log p_t(y = label | x): the score of p_t(x | y) (paper eq. 14)
    for strength 1, sharper for strength > 1 (Dhariwal & Nichol 2021). `classifier(x, t)` returns
    logits of a classifier trained on noisy x_t (a noise-conditional classifier); `label` is one
    class or one per sample. Use the result as the `score_fn` of any sampler."""
    if not strength >= 0:
        raise ValueError(f"guidance strength must be >= 0, got {strength}")
    labels = torch.as_tensor(label)
    if labels.dtype.is_floating_point or labels.ndim > 1:
        raise ValueError(f"label must be an integer class or a 1-D tensor of them, got {label!r}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"class labels must lie in 0..{num_classes - 1}, got {labels.tolist()}")

    def guided_score(x, t):
        score = score_fn(x, t)
        if strength == 0:
            return score
        with torch.enable_grad():
            x_ = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(classifier(x_, t), dim=1)
            chosen = log_probs.gather(1, labels.to(x.device).expand(x.shape[0])[:, None])
            grad = torch.autograd.grad(chosen.sum(), x_)[0]
        return score + strength * grad.to(score.dtype)

    return guided_score


def replacement_moments(mean, cov, value: float, sde: SDE, *, steps: int, eps: float = 1e-3):
    """Exact mean and variance of x_1 from `inpaint` (Euler–Maruyama, no corrector) on 2-D Gaussian
    data N(mean, cov) with x_0 = `value` observed, started from the prior: every step is linear in
    x_1 with Gaussian noise, so the moments follow a recursion with the sampler's own time grid:

        x1' = x1 - [f_i x1 - g_i^2 s_1] dt + g_i sqrt(dt) z,
        s_1 = -(P_10 (x0_i - m_i mu_0) + P_11 (x1 - m_i mu_1)),  P = (m_i^2 C + v_i I)^-1,

    where x0_i = m_i value + sqrt(v_i) xi is the replaced (noisy) observation. Compare with the exact
    conditional N(mu_1 + C_10 / C_00 (value - mu_0), C_11 - C_10^2 / C_00): the difference is the
    replacement method's bias (float64)."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    times, dt = _time_grid(sde, steps, eps, dtype=torch.float64)
    m_all, v_all = sde.mean_coeff(times), sde.marginal_std(times) ** 2
    f_all, g2_all = sde.drift_coeff(times), sde.diffusion(times) ** 2
    mu1, var1 = 0.0, sde.prior_std ** 2
    for i in range(steps):
        m, v, f, g2 = m_all[i].item(), v_all[i].item(), f_all[i].item(), g2_all[i].item()
        precision = torch.linalg.inv(m ** 2 * cov + v * torch.eye(2, dtype=torch.float64))
        p10, p11 = precision[1, 0].item(), precision[1, 1].item()
        keep = 1 - f * dt - g2 * dt * p11
        mu1 = keep * mu1 - g2 * dt * p10 * m * (value - mean[0].item()) + g2 * dt * p11 * m * mean[1].item()
        var1 = keep ** 2 * var1 + (g2 * dt * p10) ** 2 * v + (g2 * dt if i + 1 < steps else 0.0)
    return mu1, var1

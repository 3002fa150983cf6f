"""Samplers: plain functions that integrate the reverse-time SDE or the probability-flow ODE.

All share one signature,

    sampler(score_fn, sde, shape, *, steps=..., eps=None, generator=None, callback=None,
            denoise=False, x_init=None, device=None, ...) -> SamplerResult(samples, nfe)

- `score_fn(x, t)` is any score: a trained net or an exact score of toy data;
- time runs from T down to `eps` (default 1e-3, or the model's training eps where that is larger:
  a shipped model carries it, and an eps below it is refused, `checks.check_eps`); `x_init`
  (default: a draw from the prior) starts it;
- `generator` seeds every random draw; the device is the generator's, else `device`, else cpu;
- `callback(i, t, x)` is for trajectories and progress bars. Fixed-step samplers call it after
  each step i with that step's x_mean; the scipy ODE after each *accepted* adaptive step with its
  state; the torchdiffeq ODE at each drift *evaluation* (torchdiffeq has no step hook, so this
  includes the Runge–Kutta stages and rejected trial steps, at times that are not monotone);
- `nfe` counts score evaluations; `denoise=True` adds one Tweedie step at the end (Song et al. 2021, Appendix D):
  x0_hat = (x + std(eps)^2 s(x, eps)) / m(eps), the posterior mean of x_0, one more evaluation.

Song et al. (2021): Euler–Maruyama on the reverse SDE eq. (6); predictor–corrector Alg. 1 with the
Langevin corrector Alg. 5 (alpha_i for VP-type SDEs) and the reverse-diffusion predictor eq. (46);
probability-flow ODE eq. (13) with RK45 (scipy, as the tutorial) or dopri5 (torchdiffeq, batched on
the device); and a few-step deterministic solver of the same ODE, Heun's 2nd-order method on the
time grid of Karras et al. (2022, "EDM", Alg. 1 and eq. 5), `heun_ode`; EDM's stochastic sampler
on the same grid (Alg. 2: fresh noise before each Heun or Euler step), `edm_stochastic`; and
SDE-DPM-Solver++ (Lu et al. 2022; exact steps of the reverse SDE for a fixed denoiser, second order
by reusing the previous evaluation), `dpm_solver_sde`. Before the SDE view: NCSN's annealed
Langevin dynamics (Song & Ermon 2019, Alg. 1), `annealed_langevin`, which takes a list of noise
levels instead of `steps` and `eps`.

Controllable generation (inpainting, guidance) lives in `controllable.py`.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .checks import (FiniteSteps, check_callable, check_choice, check_data, check_finite_result,
                     check_eps, check_generator, check_instance, check_int, check_positive_int,
                     check_real, check_shape, check_tensor, checked_score_fn)
from .ode import ODEConvergenceError, check_solver, solve
from .sde import SDE, append_dims, normal_like

__all__ = ["SamplerResult", "ODEConvergenceError", "euler_maruyama", "langevin_corrector_step",
           "predictor_corrector", "probability_flow_ode", "heun_time_grid", "heun_ode",
           "edm_stochastic", "dpm_solver_sde", "annealed_langevin", "tweedie_denoise",
           "PREDICTORS"]


class SamplerResult(NamedTuple):
    samples: torch.Tensor
    nfe: int


PREDICTORS = ("euler_maruyama", "reverse_diffusion")


def check_sampler_arguments(shape, steps, eps, sde: SDE, *, score_fn=None, generator=None,
                            callback=None):
    """The arguments every sampler shares (`checks`); returns (shape, steps, eps) normalised
    (shape a tuple of ints, steps an int or None for the adaptive ODE, eps a float)."""
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    if score_fn is not None:
        check_callable("score_fn", score_fn)
    shape = check_shape("shape", shape)
    if steps is not None:
        steps = check_positive_int("steps", steps)
    eps = check_eps(eps, sde, score_fn)
    check_generator("generator", generator)
    check_callable("callback", callback, optional=True)
    return shape, steps, eps


def initial_state(sde: SDE, shape, generator, device, x_init):
    device = generator.device if generator is not None else torch.device(device or "cpu")
    if x_init is not None:
        check_tensor("x_init", x_init)
        if tuple(x_init.shape) != tuple(shape):
            raise ValueError(f"x_init has shape {tuple(x_init.shape)}, expected {tuple(shape)}")
        check_data("x_init", x_init)
        return x_init.to(device), device
    return sde.prior_sampling(shape, generator=generator, device=device), device


def time_grid(sde: SDE, steps: int, eps: float, device=None, dtype=torch.float32):
    """The fixed-step samplers' times t_i = linspace(T, eps, steps) and step dt = t_0 - t_1."""
    times = torch.linspace(sde.T, eps, steps, device=device, dtype=dtype)
    return times, ((sde.T - eps) / (steps - 1) if steps > 1 else sde.T - eps)


def tweedie_denoise(score_fn, sde: SDE, x: torch.Tensor, t: float) -> torch.Tensor:
    """E[x_0 | x_t] = (x_t + std(t)^2 grad log p_t(x_t)) / m(t) (Tweedie's formula)."""
    t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    std = append_dims(sde.marginal_std(t_vec), x.ndim)
    mean_coeff = append_dims(sde.mean_coeff(t_vec), x.ndim)
    return (x + std ** 2 * score_fn(x, t_vec)) / mean_coeff


def euler_maruyama_step(reverse, x, t_vec, dt):
    """The mean x - [f - g^2 s] dt of one reverse Euler–Maruyama step and its noise scale g sqrt(dt)."""
    return x - reverse.drift(x, t_vec) * dt, append_dims(reverse.diffusion(t_vec), x.ndim) * math.sqrt(dt)


@torch.no_grad()
def euler_maruyama(score_fn, sde: SDE, shape, *, steps: int = 500, eps: float | None = None,
                   generator=None, callback: Callable | None = None, denoise: bool = False,
                   x_init=None, device=None) -> SamplerResult:
    """Euler–Maruyama on the reverse SDE, t_i = linspace(T, eps, steps), dt = t_0 - t_1:

        x_mean = x - [f(x, t) - g(t)^2 s(x, t)] dt,    x = x_mean + g(t) sqrt(dt) z,

    returning x_mean of the last step (no noise added at the end), as the tutorial does. As in
    the tutorial, step i evaluates at t_i and moves by dt, so the last step (at t = eps) ends
    nominally at eps - dt: the steps sample [eps, T] on the grid's left end points."""
    shape, steps, eps = check_sampler_arguments(shape, steps, eps, sde, score_fn=score_fn,
                                                generator=generator, callback=callback)
    score_fn = checked_score_fn(score_fn)
    x, device = initial_state(sde, shape, generator, device, x_init)
    reverse = sde.reverse(score_fn)
    times, dt = time_grid(sde, steps, eps, device, x.dtype)
    x_mean, finite = x, FiniteSteps()
    for i, t in enumerate(times):
        x_mean, noise_scale = euler_maruyama_step(reverse, x, t.expand(shape[0]), dt)
        x = x_mean + noise_scale * normal_like(x, generator)
        finite.update(x_mean)
        if callback is not None:
            callback(i, t.item(), x_mean)
    nfe = steps
    if denoise:
        x_mean, nfe = tweedie_denoise(score_fn, sde, x_mean, eps), nfe + 1
    return SamplerResult(check_finite_result("euler_maruyama", x_mean, finite, times), nfe)


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
                        eps: float | None = None, predictor: str = "euler_maruyama", corrector_steps: int = 1,
                        generator=None, callback: Callable | None = None, denoise: bool = False,
                        x_init=None, device=None) -> SamplerResult:
    """Predictor–corrector sampling (paper Alg. 1). At each t_i the tutorial's order: first
    `corrector_steps` Langevin steps at signal-to-noise ratio `snr`, then one predictor step:
    'euler_maruyama' (the tutorial's default) or 'reverse_diffusion' (the paper's, eq. (46):
    x_mean = x - f_i + G_i^2 s, x = x_mean + G_i z with (f_i, G_i) = sde.discretize).
    Returns the last x_mean; nfe = steps * (1 + corrector_steps)."""
    shape, steps, eps = check_sampler_arguments(shape, steps, eps, sde, score_fn=score_fn,
                                                generator=generator, callback=callback)
    snr = check_real("snr", snr, low=0.0, low_open=True)
    check_choice("predictor", predictor, PREDICTORS)
    corrector_steps = check_int("corrector_steps", corrector_steps, minimum=0)
    score_fn = checked_score_fn(score_fn)
    x, device = initial_state(sde, shape, generator, device, x_init)
    reverse = sde.reverse(score_fn)
    times, dt = time_grid(sde, steps, eps, device, x.dtype)
    x_mean, finite = x, FiniteSteps()
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        for _ in range(corrector_steps):
            x = langevin_corrector_step(score_fn, sde, x, t_vec, dt, snr, generator)
        if predictor == "euler_maruyama":
            x_mean, noise_scale = euler_maruyama_step(reverse, x, t_vec, dt)
        else:
            f, G = sde.discretize(x, t_vec, dt)
            G = append_dims(G, x.ndim)
            x_mean = x - f + G ** 2 * score_fn(x, t_vec)
            noise_scale = G
        x = x_mean + noise_scale * normal_like(x, generator)
        finite.update(x_mean)
        if callback is not None:
            callback(i, t.item(), x_mean)
    nfe = steps * (1 + corrector_steps)
    if denoise:
        x_mean, nfe = tweedie_denoise(score_fn, sde, x_mean, eps), nfe + 1
    hint = "; a score of norm 0 makes the Langevin step infinite" if corrector_steps else ""
    return SamplerResult(check_finite_result("predictor_corrector", x_mean, finite, times, hint),
                         nfe)


def probability_flow_ode(score_fn, sde: SDE, shape, *, eps: float | None = None, rtol: float = 1e-5,
                         atol: float = 1e-5, solver: str = "scipy", method: str | None = None,
                         max_nfe: int = 20_000, generator=None, callback: Callable | None = None,
                         denoise: bool = False, x_init=None, device=None) -> SamplerResult:
    """The probability-flow ODE dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (eq. 13) from T to eps with an
    adaptive solver (`ode.solve`): solver='scipy' (RK45 as the tutorial, on one float64 vector) or
    'torchdiffeq' (dopri5, batched on the tensors' device and dtype); `method` picks another
    scheme of that solver. Adaptive, so there is no `steps`; `max_nfe` bounds the work: a solver
    failure or an exhausted budget raises ODEConvergenceError instead of hanging."""
    check_solver(solver, method)
    shape, _, eps = check_sampler_arguments(shape, None, eps, sde, score_fn=score_fn,
                                            generator=generator, callback=callback)
    rtol = check_real("rtol", rtol, low=0.0, low_open=True)
    atol = check_real("atol", atol, low=0.0, low_open=True)
    max_nfe = check_positive_int("max_nfe", max_nfe)
    score_fn = checked_score_fn(score_fn)
    x, device = initial_state(sde, shape, generator, device, x_init)
    drift = sde.reverse(score_fn, probability_flow=True).drift
    step_callback = None if callback is None else (lambda i, t, state: callback(i, t, state[0]))
    (x,), nfe = solve(lambda state, t_vec: (drift(state[0], t_vec),), (x,), sde.T, eps,
                      solver=solver, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe,
                      callback=step_callback)
    if denoise:
        with torch.no_grad():
            x = tweedie_denoise(score_fn, sde, x, eps)
        nfe += 1
    return SamplerResult(check_finite_result("probability_flow_ode", x), nfe)


def heun_time_grid(sde: SDE, steps: int, eps: float = 1e-3, rho: float = 7.0) -> torch.Tensor:
    """steps + 1 times from T to eps whose noise levels follow EDM eq. (5):
    sigma_i = (sigma_max^(1/rho) + i/steps (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    with sigma = sde.scaled_std: steps crowd where the noise is small and the score changes fast."""
    ends = sde.scaled_std(torch.tensor([sde.T, eps], dtype=torch.float64))
    fraction = torch.arange(steps + 1, dtype=torch.float64) / steps
    sigma = (ends[0] ** (1 / rho) + fraction * (ends[1] ** (1 / rho) - ends[0] ** (1 / rho))) ** rho
    times = sde.time_of_scaled_std(sigma)
    times[0], times[-1] = sde.T, eps                        # exact end points
    return times


@torch.no_grad()
def heun_ode(score_fn, sde: SDE, shape, *, steps: int = 18, eps: float | None = None, rho: float = 7.0,
             generator=None, callback: Callable | None = None, denoise: bool = False,
             x_init=None, device=None) -> SamplerResult:
    """The probability-flow ODE (eq. 13) in `steps` Heun steps (EDM Alg. 1, 2 * steps evaluations).

    It integrates the same ODE written for y = x / m(t) against sigma = std(t) / m(t) (EDM eq. 4),
    dy/dsigma = -sigma m(t) s(m(t) y, t), which is the probability-flow ODE of every linear SDE here
    and is close to linear in sigma, so few steps suffice. The times come from `heun_time_grid`.
    It is `edm_stochastic` without noise (churn 0), whose loop holds the Heun step."""
    return _edm(score_fn, sde, shape, steps=steps, order=2, eps=eps, rho=rho, churn=0.0,
                churn_sigma_min=0.0, churn_sigma_max=math.inf, noise_inflation=1.0,
                generator=generator, callback=callback, denoise=denoise, x_init=x_init,
                device=device, what="heun_ode")


@torch.no_grad()
def edm_stochastic(score_fn, sde: SDE, shape, *, steps: int = 25, order: int = 2, eps: float | None = None,
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
    return _edm(score_fn, sde, shape, steps=steps, order=order, eps=eps, rho=rho, churn=churn,
                churn_sigma_min=churn_sigma_min, churn_sigma_max=churn_sigma_max,
                noise_inflation=noise_inflation, generator=generator, callback=callback,
                denoise=denoise, x_init=x_init, device=device, what="edm_stochastic")


def _edm(score_fn, sde, shape, *, steps, order, eps, rho, churn, churn_sigma_min,
         churn_sigma_max, noise_inflation, generator, callback, denoise, x_init, device, what):
    """The loop of `edm_stochastic` and `heun_ode`; `what` names the sampler in errors."""
    shape, steps, eps = check_sampler_arguments(shape, steps, eps, sde, score_fn=score_fn,
                                                generator=generator, callback=callback)
    rho = check_real("rho", rho, low=0.0, low_open=True)
    if check_int("order", order) not in (1, 2):
        raise ValueError(f"order must be 1 (Euler) or 2 (Heun), got {order!r}")
    churn = check_real("churn", churn, low=0.0)
    noise_inflation = check_real("noise_inflation", noise_inflation, low=0.0, low_open=True)
    churn_sigma_min = check_real("churn_sigma_min", churn_sigma_min, low=0.0)
    churn_sigma_max = check_real("churn_sigma_max", churn_sigma_max, low=0.0, finite=False)
    score_fn = checked_score_fn(score_fn)
    if not churn >= 0 or not noise_inflation > 0 or not churn_sigma_min <= churn_sigma_max:
        raise ValueError(f"need churn >= 0 (got {churn}), noise_inflation > 0 (got {noise_inflation}) and "
                         f"churn_sigma_min <= churn_sigma_max (got {churn_sigma_min}, {churn_sigma_max})")
    x, device = initial_state(sde, shape, generator, device, x_init)
    times64 = heun_time_grid(sde, steps, eps, rho)
    sigmas64 = sde.scaled_std(times64)
    gamma = min(churn / steps, math.sqrt(2) - 1)
    churned = (sigmas64[:-1] >= churn_sigma_min) & (sigmas64[:-1] <= churn_sigma_max)
    sigma_hat64 = torch.where(churned, sigmas64[:-1] * (1 + gamma), sigmas64[:-1]).clamp(max=sigmas64[0])
    raised = sigma_hat64 > sigmas64[:-1]
    time_hat64 = times64[:-1].clone()
    if bool(raised.any()):
        time_hat64[raised] = sde.time_of_scaled_std(sigma_hat64[raised])
    to = dict(device=device, dtype=x.dtype)
    times, sigmas, means = times64.to(**to), sigmas64.to(**to), sde.mean_coeff(times64).to(**to)
    time_hat, sigma_hat, mean_hat = time_hat64.to(**to), sigma_hat64.to(**to), sde.mean_coeff(time_hat64).to(**to)

    def slope(y, t, sigma, mean):
        return -sigma * mean * score_fn(mean * y, t.expand(shape[0]))

    y, finite = x / means[0], FiniteSteps()
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
        finite.update(y)
        if callback is not None:
            callback(i, times[i + 1].item(), means[i + 1] * y)
    x, nfe = means[-1] * y, order * steps
    if denoise:
        x, nfe = tweedie_denoise(score_fn, sde, x, eps), nfe + 1
    return SamplerResult(check_finite_result(what, x, finite, times64[:-1]), nfe)


@torch.no_grad()
def dpm_solver_sde(score_fn, sde: SDE, shape, *, steps: int = 50, order: int = 2, eta: float = 1.0,
                   eps: float | None = None, rho: float = 7.0, generator=None, callback: Callable | None = None,
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
    shape, steps, eps = check_sampler_arguments(shape, steps, eps, sde, score_fn=score_fn,
                                                generator=generator, callback=callback)
    rho = check_real("rho", rho, low=0.0, low_open=True)
    if check_int("order", order) not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    eta = check_real("eta", eta, low=0.0)
    score_fn = checked_score_fn(score_fn)
    x, device = initial_state(sde, shape, generator, device, x_init)
    times64 = heun_time_grid(sde, steps, eps, rho)
    sigmas64, means64 = sde.scaled_std(times64), sde.mean_coeff(times64)
    h = torch.log(sigmas64[:-1] / sigmas64[1:])                # h_i, float64
    to = dict(device=device, dtype=x.dtype)
    times, sigmas, means = times64.to(**to), sigmas64.to(**to), means64.to(**to)
    keep = ((sigmas64[1:] / sigmas64[:-1]) * torch.exp(-eta * h)).to(**to)
    toward = (-torch.expm1(-(1 + eta) * h)).to(**to)
    noise = (sigmas64[1:] * torch.sqrt(-torch.expm1(-2 * eta * h))).to(**to)
    y, previous, finite = x / means[0], None, FiniteSteps()
    for i in range(steps):
        denoised = y + sigmas[i] ** 2 * means[i] * score_fn(means[i] * y, times[i].expand(shape[0]))
        target = denoised
        if order == 2 and previous is not None:
            target = denoised + (denoised - previous) * (h[i] / h[i - 1]).item() / 2
        y = keep[i] * y + toward[i] * target
        if eta > 0:
            y = y + noise[i] * normal_like(y, generator)
        previous = denoised
        finite.update(y)
        if callback is not None:
            callback(i, times[i + 1].item(), means[i + 1] * y)
    x, nfe = means[-1] * y, steps
    if denoise:
        x, nfe = tweedie_denoise(score_fn, sde, x, eps), nfe + 1
    return SamplerResult(check_finite_result("dpm_solver_sde", x, finite, times64[:-1]), nfe)


def check_noise_levels(name: str, sigmas) -> torch.Tensor:
    """A non-empty, strictly decreasing list of positive, finite noise levels (float64)."""
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__len__"):
        raise TypeError(f"{name} must be a sequence of noise levels sigma_1 > ... > sigma_L > 0, "
                        f"got {type(sigmas).__name__}")
    values = [check_real(f"every entry of {name}", s, low=0.0, low_open=True)
              for s in (sigmas.tolist() if torch.is_tensor(sigmas) else list(sigmas))]
    if not values:
        raise ValueError(f"{name} must hold at least one noise level, got none")
    if any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"{name} must be strictly decreasing (sigma_1 > ... > sigma_L, "
                         f"largest noise first), got {values}")
    return torch.tensor(values, dtype=torch.float64)


@torch.no_grad()
def annealed_langevin(score_fn, sde: SDE | None, shape, *, sigmas, steps_per_level: int = 100,
                      step_size: float = 2e-5, generator=None, callback: Callable | None = None,
                      x_init=None, device=None) -> SamplerResult:
    """NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1). For each noise level
    sigma_i of `sigmas` (sigma_1 > ... > sigma_L), with alpha_i = step_size sigma_i^2 / sigma_L^2,
    `steps_per_level` Langevin steps on the data perturbed at that level:

        x <- x + alpha_i / 2 s(x, sigma_i) + sqrt(alpha_i) z,    z ~ N(0, I),

    each level starting where the previous one ended. (In the chapter's form x + d s + sqrt(2 d) z
    the step is d = alpha_i / 2.) The step grows with sigma_i^2 so that the signal-to-noise ratio
    |alpha_i s / 2| / |sqrt(alpha_i) z| of a step, with |s| ~ 1 / sigma_i, is the same at every
    level (paper, Sec. 4.3).

    The score is conditioned on the noise level through the SDE: sigma_i is sigma~ = std / m
    (`SDE.scaled_std`; for a VE SDE the noise std itself), so score_fn(x, t_i) is called at
    t_i = sde.time_of_scaled_std(sigma_i), which must lie in (0, T]. With sde=None, score_fn is a
    noise-conditional score of (x, sigma) and is called at the noise level itself. The default
    start x_init is N(0, sigma_1^2 I) (broad, as the paper's uniform noise). Returns the last x (no
    final denoising step); nfe = L * steps_per_level; callback(k, t_i or sigma_i, x) after each
    step k."""
    if sde is not None:
        check_instance("sde", sde, SDE, "VESDE(25.0)")
    check_callable("score_fn", score_fn)
    shape = check_shape("shape", shape)
    sigmas = check_noise_levels("sigmas", sigmas)
    steps_per_level = check_positive_int("steps_per_level", steps_per_level)
    step_size = check_real("step_size", step_size, low=0.0, low_open=True)
    check_generator("generator", generator)
    check_callable("callback", callback, optional=True)
    if sde is None:
        levels = sigmas
    else:
        levels = sde.time_of_scaled_std(sigmas)
        top = float(sde.scaled_std(torch.tensor([sde.T], dtype=torch.float64)))
        if not bool(torch.isfinite(levels).all()) or float(levels.max()) > sde.T:
            raise ValueError(f"sigmas must lie within the SDE's noise levels (0, {top:.4g}] "
                             f"(sigma~ at t = T = {sde.T:g}), got sigma_1 = {float(sigmas[0]):g}")
    score_fn = checked_score_fn(score_fn)
    device = generator.device if generator is not None else torch.device(device or "cpu")
    if x_init is None:
        x = float(sigmas[0]) * torch.randn(shape, generator=generator, device=device)
    else:
        x, device = initial_state(sde, shape, generator, device, x_init)
    alphas = (step_size * sigmas ** 2 / sigmas[-1] ** 2).tolist()
    finite, k = FiniteSteps(), 0
    for level, alpha in zip(levels.tolist(), alphas):
        level_vec = torch.full((shape[0],), level, device=device, dtype=x.dtype)
        for _ in range(steps_per_level):
            x = x + alpha / 2 * score_fn(x, level_vec) + math.sqrt(alpha) * normal_like(
                x, generator)
            finite.update(x)
            if callback is not None:
                callback(k, level, x)
            k += 1
    schedule = levels.repeat_interleave(steps_per_level)
    return SamplerResult(check_finite_result("annealed_langevin", x, finite, schedule,
                                             "; or step_size is too large for the smallest noise "
                                             "level (alpha_L = step_size)"),
                         len(alphas) * steps_per_level)

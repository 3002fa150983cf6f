"""Score matching: denoising (Vincent 2011; Song et al. 2021, eq. (7)), implicit (Hyvärinen 2005)
and sliced (Song, Garg, Shi & Ermon 2019).

For t ~ U(eps, T), x_0 ~ data, z ~ N(0, I) and x_t = m(t) x_0 + std(t) z, the score of the
perturbation kernel is grad log p_0t(x_t | x_0) = -z / std(t), so the weighted objective

    lambda(t) |s(x_t, t) + z / std(t)|^2

is minimised by the true score grad log p_t. Two weightings:
- 'std2' (the tutorial's): lambda = std(t)^2, loss = |s std(t) + z|^2, each term of order one;
- 'likelihood': lambda = g(t)^2 (Song, Durkan, Murray & Ermon 2021), which makes the objective a
  bound on the negative log-likelihood; loss = (g / std)^2 |s std + z|^2;
- 'flow_matching': lambda = g(t)^4 / 4, loss = (g^2 / (2 std))^2 |s std + z|^2: the conditional
  flow-matching loss |u - u(x_t | x_0)|^2 of the velocity u = f - g^2 s / 2 (Lipman et al. 2023,
  eq. 9), since its target is u(x_t | x_0) = f(x_t, t) + g^2 z / (2 std) (`flow_matching_loss`);
- 'edm': EDM's loss lambda(sigma~) |D - x_0|^2 in the rescaled state x~ = x / m, with
  lambda = (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2 (Karras et al. 2022, eq. 8 and
  Table 1) and D = (x + std^2 s) / m the denoiser of the score s (Tweedie's formula). Since
  x / m = x_0 + sigma~ z and std^2 / m = sigma~ std, D - x_0 = sigma~ (s std + z), so the loss is
  (1 + sigma~^2 / sigma_data^2) |s std + z|^2;
  EDM draws its noise levels with ln sigma~ ~ N(P_mean, P_std^2) (`sample_time(log_normal=...)`,
  `EDM_LOG_NORMAL`), and with `ScoreNet(output='denoiser')` every term is then of order one.
`dsm_loss` sums over data dimensions and averages over the batch, as the tutorial does.

Importance sampling of t for the likelihood weighting (Song, Durkan, Murray & Ermon 2021, Sec. 5):
for every linear SDE, g(t)^2 / v(t) = d/dt ln(v / m^2) = d/dt ln sigma~(t)^2, so t drawn with
density proportional to g^2 / v is ln sigma~^2 drawn uniformly on [ln sigma~^2(eps), ln sigma~^2(T)]
and mapped back with the SDE's closed-form `time_of_scaled_std`. The likelihood-weighted term
(g^2 / v) |s std + z|^2 divided by that density is Z |s std + z|^2, Z = ln(sigma~^2(T) / sigma~^2(eps))
(about 16.1 for the tutorial's VE, sigma = 25, eps = 1e-5): the same per-sample loss as 'std2',
times a constant, but with most draws at the small noise levels where the likelihood is decided.

Implicit and sliced score matching fit a score s(x) to samples x ~ p with no noise and no known
target: both equal the Fisher divergence 1/2 E|s - grad log p|^2 up to a constant that does not
depend on s (integration by parts). `implicit_score_matching_loss` computes the trace of the
Jacobian exactly (D backward passes); `sliced_score_matching_loss` estimates it with random
projections v, E[v v^T] = I (one backward pass per projection).
"""
from __future__ import annotations

import math

import torch

from .checks import (check_batch_nonempty, check_bool, check_callable, check_choice,
                     check_data, check_finite_tensor, check_floating_tensor, check_generator,
                     check_instance, check_positive_int, check_real, check_score_output,
                     check_tensor)
from .sde import SDE, append_dims, normal_like

__all__ = ["WEIGHTINGS", "PROJECTIONS", "EDM_LOG_NORMAL", "dsm_loss", "sample_time",
           "edm_log_normal", "importance_weight",
           "log_scaled_variance_range", "implicit_score_matching_loss",
           "sliced_score_matching_loss"]

WEIGHTINGS = ("std2", "likelihood", "flow_matching", "edm")
# EDM's noise-level distribution, ln sigma~ ~ N(-1.2, 1.2^2), for data of std sigma_data = 0.5
# (Karras et al. 2022, Table 1); for other data it shifts by ln(sigma_data / 0.5)
EDM_LOG_NORMAL = (-1.2, 1.2)
PROJECTIONS = ("gaussian", "rademacher")


def _log_scaled_variance_ends(sde: SDE, eps: float) -> tuple[float, float]:
    """(ln sigma~^2(eps), ln sigma~^2(T)), in float64."""
    ends = sde.scaled_std(torch.tensor([eps, sde.T], dtype=torch.float64))
    return 2 * math.log(ends[0]), 2 * math.log(ends[1])


def log_scaled_variance_range(sde: SDE, eps: float) -> float:
    """Z = ln(sigma~^2(T) / sigma~^2(eps)), the normaliser of the density g^2 / v on [eps, T]."""
    log_low, log_high = _log_scaled_variance_ends(sde, eps)
    return log_high - log_low


def sample_time(sde: SDE, batch: int, *, eps: float = 1e-5, importance_sampling: bool = False,
                log_normal: tuple[float, float] | None = None,
                generator: torch.Generator | None = None, device=None,
                dtype=torch.float32) -> torch.Tensor:
    """Diffusion times for a DSM batch: t ~ U(eps, T), or with `importance_sampling` t with density
    g(t)^2 / (v(t) Z) on [eps, T], i.e. ln sigma~(t)^2 uniform (see the module docstring), or with
    `log_normal=(P_mean, P_std)` ln sigma~(t) ~ N(P_mean, P_std^2) (EDM's noise levels, Karras et
    al. 2022, Table 1), each draw outside [sigma~(eps), sigma~(T)] clamped to that range."""
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    batch = check_positive_int("batch", batch)
    eps = check_real("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True)
    check_generator("generator", generator)
    if log_normal is not None:
        if importance_sampling:
            raise ValueError("give importance_sampling or log_normal, not both")
        if not isinstance(log_normal, (tuple, list)) or len(log_normal) != 2:
            raise ValueError(f"log_normal must be a pair (P_mean, P_std), got {log_normal!r}")
        p_mean = check_real("log_normal[0] (P_mean)", log_normal[0])
        p_std = check_real("log_normal[1] (P_std)", log_normal[1], low=0.0, low_open=True)
        n = torch.randn(batch, generator=generator, device=device, dtype=torch.float64)
        ends = sde.scaled_std(torch.tensor([eps, sde.T], dtype=torch.float64)).tolist()
        sigma = torch.exp(p_mean + p_std * n).clamp(*ends)
        return sde.time_of_scaled_std(sigma).clamp(eps, sde.T).to(dtype)
    u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    if not importance_sampling:
        return u * (sde.T - eps) + eps
    log_low, log_high = _log_scaled_variance_ends(sde, eps)
    sigma = torch.exp(0.5 * (log_low + u.double() * (log_high - log_low)))
    return sde.time_of_scaled_std(sigma).clamp(eps, sde.T).to(dtype)


def edm_log_normal(sigma_data: float = 0.5) -> tuple[float, float]:
    """EDM's (P_mean, P_std) for data of std sigma_data: (-1.2 + ln(sigma_data / 0.5), 1.2), the
    paper's distribution of noise levels scaled with the data (Karras et al. 2022, Table 1)."""
    sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
    return EDM_LOG_NORMAL[0] + math.log(sigma_data / 0.5), EDM_LOG_NORMAL[1]


def importance_weight(sde: SDE, eps: float) -> float:
    """The constant that turns |s std + z|^2 at importance-sampled t into an unbiased estimate of
    the likelihood-weighted loss averaged over t ~ U(eps, T): Z / (T - eps)."""
    return log_scaled_variance_range(sde, eps) / (sde.T - eps)


def dsm_loss(score_fn, sde: SDE, x0: torch.Tensor, *, eps: float = 1e-5, weighting: str = "std2",
             importance_sampling: bool = False, t: torch.Tensor | None = None,
             z: torch.Tensor | None = None, generator: torch.Generator | None = None,
             reduce: bool = True, check_finite: bool = True,
             sigma_data: float = 0.5) -> torch.Tensor:
    """Denoising score-matching loss of `score_fn(x, t)` on a batch x0.

    t and z may be given (common random numbers for comparisons); otherwise t is drawn by
    `sample_time` and z ~ N(0, I), both with `generator`. With `importance_sampling` (likelihood
    weighting only) t follows the density g^2 / v and the result estimates the same
    likelihood-weighted loss as uniform t, with far smaller variance. The 'edm' weighting draws t
    with ln sigma~ ~ N(P_mean, P_std^2) (`EDM_LOG_NORMAL` shifted by ln(sigma_data / 0.5)) and
    weights by 1 + sigma~^2 / sigma_data^2 (module docstring). Returns the batch mean, or
    per-sample losses (batch,) if reduce=False (for mean ± standard error). `check_finite`
    checks x0 and the loss for NaN / inf (two synchronisations); `train` checks its data once
    and its loss at every step itself, so it turns this off."""
    check_choice("weighting", weighting, WEIGHTINGS)
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    eps = check_real("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True)
    check_batch_nonempty("x0", check_floating_tensor("x0", x0))
    if check_finite:
        check_finite_tensor("x0", x0)
    if t is not None:
        check_tensor("t", t)
    if z is not None:
        check_tensor("z", z)
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling draws t for the 'likelihood' weighting; "
                         f"got weighting={weighting!r}")
    sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
    batch = x0.shape[0]
    if t is None:
        t = sample_time(sde, batch, eps=eps, importance_sampling=importance_sampling,
                        log_normal=edm_log_normal(sigma_data) if weighting == "edm" else None,
                        generator=generator, device=x0.device, dtype=x0.dtype)
    if z is None:
        z = normal_like(x0, generator)
    x_t = sde.perturb(x0, t, z)
    std = sde.marginal_std(t)
    score = check_score_output(score_fn(x_t, t), x_t, finite=False)
    residual = score * append_dims(std, x0.ndim) + z
    per_sample = residual.pow(2).reshape(batch, -1).sum(dim=1)
    if importance_sampling:
        per_sample = per_sample * importance_weight(sde, eps)
    elif weighting == "likelihood":
        per_sample = per_sample * (sde.diffusion(t) / std) ** 2
    elif weighting == "flow_matching":
        per_sample = per_sample * (sde.diffusion(t) ** 2 / (2 * std)) ** 2
    elif weighting == "edm":
        per_sample = per_sample * (1 + (sde.scaled_std(t) / sigma_data) ** 2)
    loss = per_sample.mean() if reduce else per_sample
    if check_finite and not bool(torch.isfinite(loss).all()):
        raise FloatingPointError("dsm_loss: the loss is NaN or infinite although x0 is finite: "
                                 "score_fn returned non-finite values")
    return loss


def _score_with_input(score_fn, x, t):
    """x as a leaf that requires grad, and s(x) (score_fn(x), or score_fn(x, t) if t is given),
    computed with gradients on; `keep` says whether the caller wants a graph (grad mode on)."""
    check_callable("score_fn", score_fn)
    check_data("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must be a batch of vectors (batch, D), got shape {tuple(x.shape)}; "
                         "flatten images first")
    if t is not None:
        check_tensor("t", t)
    keep = torch.is_grad_enabled()
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        score = score_fn(x) if t is None else score_fn(x, t)
        check_score_output(score, x, finite=False)
    return x, score, keep


def _finish(name, per_sample, reduce):
    if not bool(torch.isfinite(per_sample).all()):
        raise FloatingPointError(f"{name}: the loss is NaN or infinite although x is finite: "
                                 "score_fn returned non-finite values or derivatives")
    return per_sample.mean() if reduce else per_sample


def implicit_score_matching_loss(score_fn, x: torch.Tensor, *, t: torch.Tensor | None = None,
                                 reduce: bool = True) -> torch.Tensor:
    """Implicit score matching (Hyvärinen 2005, Theorem 1, eq. 4) of a score s on samples x ~ p:

        J(s) = E_x[ tr(grad_x s(x)) + 1/2 |s(x)|^2 ] = 1/2 E|s - grad log p|^2 - 1/2 E|grad log p|^2,

    so it is minimised by the true score without knowing it. The trace is exact: one backward
    pass per data dimension D (the diagonal entries d s_i / d x_i), each keeping the graph so
    that the loss can be differentiated in the score's parameters. For Gaussian data N(mu, S)
    and the exact score, J = -tr(S^-1) + 1/2 tr(S^-1) = -1/2 tr(S^-1).

    x: (batch, D). score_fn(x) -> (batch, D), or score_fn(x, t) if `t` is given (a net at one
    noise level). Returns the batch mean, or per-sample values (batch,) if reduce=False."""
    check_bool("reduce", reduce)
    x, score, keep = _score_with_input(score_fn, x, t)
    trace = torch.zeros(x.shape[0], dtype=score.dtype, device=score.device)
    with torch.enable_grad():
        for i in range(x.shape[1]):
            grad = torch.autograd.grad(score[:, i].sum(), x, create_graph=keep,
                                       retain_graph=True)[0]
            trace = trace + grad[:, i]
    per_sample = trace + 0.5 * score.pow(2).sum(dim=1)
    return _finish("implicit_score_matching_loss", per_sample, reduce)


def sliced_score_matching_loss(score_fn, x: torch.Tensor, *, t: torch.Tensor | None = None,
                               n_projections: int = 1, projection: str = "rademacher",
                               variance_reduction: bool = False, v: torch.Tensor | None = None,
                               generator: torch.Generator | None = None,
                               reduce: bool = True) -> torch.Tensor:
    """Sliced score matching (Song, Garg, Shi & Ermon 2019, Sec. 3, the objective J(theta; p_v))
    of a score s on samples x ~ p, with random projections v, E[v v^T] = I:

        J(s) = E_x E_v[ v^T grad_x s(x) v + 1/2 (v^T s(x))^2 ],

    whose expectation over v is implicit score matching's (E[v^T A v] = tr A, E[(v^T s)^2] = |s|^2).
    v^T (grad s) v = v . grad_x (v . s) costs one backward pass per projection, whatever D.
    `variance_reduction` uses 1/2 |s|^2 in place of 1/2 (v^T s)^2 (their SSM-VR: its
    expectation over v, computed exactly). `projection` draws v ('rademacher': entries +-1,
    'gaussian': N(0, I)) with `generator`, `n_projections` per sample (averaged), unless `v`
    (n_projections, batch, D) is given. x, score_fn, t and reduce as for
    `implicit_score_matching_loss`."""
    check_bool("reduce", reduce)
    check_bool("variance_reduction", variance_reduction)
    n_projections = check_positive_int("n_projections", n_projections)
    check_choice("projection", projection, PROJECTIONS)
    check_generator("generator", generator)
    x, score, keep = _score_with_input(score_fn, x, t)
    if v is None:
        size = (n_projections,) + tuple(x.shape)
        v = torch.randn(size, generator=generator, dtype=x.dtype, device=x.device)
        if projection == "rademacher":
            v = torch.sign(v)
    else:
        check_floating_tensor("v", v)
        if tuple(v.shape) != (n_projections,) + tuple(x.shape):
            raise ValueError(f"v must have shape (n_projections, batch, D) = "
                             f"{(n_projections,) + tuple(x.shape)}, got {tuple(v.shape)}")
    per_sample = torch.zeros(x.shape[0], dtype=score.dtype, device=score.device)
    with torch.enable_grad():
        for v_k in v:
            projected = (v_k * score).sum(dim=1)                           # v . s(x)
            grad = torch.autograd.grad(projected.sum(), x, create_graph=keep,
                                       retain_graph=True)[0]
            quadratic = 0.5 * (score.pow(2).sum(dim=1) if variance_reduction
                               else projected.pow(2))
            per_sample = per_sample + (grad * v_k).sum(dim=1) + quadratic
    return _finish("sliced_score_matching_loss", per_sample / len(v), reduce)

"""Controllable generation (Song et al. 2021, Sec. 5 and Appendix I): conditioning an unconditional
score model at sampling time.

- `inpaint` fills unknown pixels by the replacement method: Euler–Maruyama (or predictor–corrector)
  steps on the reverse SDE, with the known pixels replaced at every step by the observation
  diffused to the current time. An approximation: `replacement_moments` computes its exact output
  moments on 2-D Gaussian data, so the book can measure its bias against the exact conditional.
- `classifier_guided_score` adds strength * grad_x log p_t(y | x) of a noise-conditional classifier
  to any score (eq. 14 with a guidance scale, Dhariwal & Nichol 2021), for any sampler.
- `classifier_free_guided_score` gets grad_x log p_t(y | x) without a classifier, as the difference
  of a class-conditional net's conditional and unconditional scores (Ho & Salimans 2022).

One strength convention for both kinds of guidance, w:

    s_w(x, t, y) = grad log p_t(x) + w grad log p_t(y | x),

so w = 0 is the unconditional score, w = 1 the score of p_t(x | y), w > 1 sharper. Dhariwal &
Nichol's classifier scale is w; Ho & Salimans write (1 + w_HS) eps(x, y) - w_HS eps(x), so
w_HS = w - 1; the "guidance scale" w_scale of eps(x) + w_scale (eps(x, y) - eps(x)) is w. For w other
than 0 and 1, s_w is the score of p_t(x) p_t(y | x)^w, which is *not* the diffused version of the
tilted data density p_0(x) p_0(y | x)^w: guided sampling with w > 1 samples no known distribution
exactly (the book checks this on a 1-D mixture).
"""
from __future__ import annotations

from typing import Callable

import torch

from .checks import (FiniteSteps, check_callable, check_data, check_finite_result, check_int,
                     check_labels, check_real, check_tensor, checked_score_fn)
from .samplers import (SamplerResult, check_sampler_arguments, euler_maruyama_step, initial_state,
                       langevin_corrector_step, time_grid)
from .sde import SDE, append_dims, normal_like

__all__ = ["inpaint", "classifier_guided_score", "classifier_free_guided_score",
           "replacement_moments"]


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
            eps: float | None = None, snr: float | None = None, corrector_steps: int = 1, generator=None,
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
    observation = check_tensor("observation", observation)
    shape, steps, eps = check_sampler_arguments(tuple(observation.shape), steps, eps, sde,
                                                score_fn=score_fn, generator=generator,
                                                callback=callback)
    if snr is not None:
        snr = check_real("snr", snr, low=0.0, low_open=True)
    corrector_steps = check_int("corrector_steps", corrector_steps, minimum=0)
    check_data("observation", observation)
    check_tensor("mask", mask)
    score_fn = checked_score_fn(score_fn)
    device = generator.device if generator is not None else observation.device
    observation = observation.to(device)
    mask = _check_mask(mask, observation)
    x, _ = initial_state(sde, shape, generator, device, x_init)
    x = x.to(observation.dtype)
    reverse = sde.reverse(score_fn)
    times, dt = time_grid(sde, steps, eps, device, x.dtype)

    def known_at(t):
        t_vec = t.expand(shape[0])
        mean = append_dims(sde.mean_coeff(t_vec), x.ndim) * observation
        return mean, mean + append_dims(sde.marginal_std(t_vec), x.ndim) * normal_like(x, generator)

    x = mask * known_at(times[0])[1] + (1 - mask) * x
    x_mean, nfe, finite = x, 0, FiniteSteps()
    for i, t in enumerate(times):
        t_vec = t.expand(shape[0])
        if snr is not None:
            for _ in range(corrector_steps):
                x = langevin_corrector_step(score_fn, sde, x, t_vec, dt, snr, generator)
                x = mask * known_at(t)[1] + (1 - mask) * x
                nfe += 1
        x_mean, noise_scale = euler_maruyama_step(reverse, x, t_vec, dt)
        x = x_mean + noise_scale * normal_like(x, generator)
        nfe += 1
        if i + 1 < steps:
            known_mean, known = known_at(times[i + 1])
            x = mask * known + (1 - mask) * x
            x_mean = mask * known_mean + (1 - mask) * x_mean
        finite.update(x_mean)
        if callback is not None:
            callback(i, t.item(), x_mean)
    x_mean = check_finite_result("inpaint", x_mean, finite, times)
    return SamplerResult(mask * observation + (1 - mask) * x_mean, nfe)


def classifier_guided_score(score_fn, classifier, label, strength: float = 1.0,
                            num_classes: int = 10):
    """s(x, t) + strength * grad_x log p_t(y = label | x): the score of p_t(x | y) (paper eq. 14)
    for strength 1, sharper for strength > 1 (Dhariwal & Nichol 2021; strength is their scale
    s). `classifier(x, t)` returns logits of a classifier trained on noisy x_t (a
    noise-conditional classifier); `label` is one class or one per sample. Use the result as the
    `score_fn` of any sampler."""
    check_callable("score_fn", score_fn)
    check_callable("classifier", classifier)
    strength = check_real("guidance strength", strength, low=0.0)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    labels = check_labels("label", label, num_classes)

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


def classifier_free_guided_score(conditional_score_fn, label, strength: float = 1.0, *,
                                 num_classes: int = 10, null_label: int | None = None):
    """s(x, t, null) + strength * [s(x, t, y) - s(x, t, null)] (Ho & Salimans 2022, eq. 6 in
    the strength convention of this module's docstring): the bracket is grad_x log p_t(y | x) by
    Bayes' rule, grad log p_t(x | y) - grad log p_t(x), with no classifier.

    `conditional_score_fn(x, t, labels)` is a class-conditional score (e.g. a
    `ScoreNet(num_classes=10)` trained with label dropout) that gives the unconditional score for
    the null label (default: `num_classes`, the ScoreNet's `null_label`). `label` is one class or
    one per sample. Both scores come from one call on a doubled batch, so a sampler's count of
    evaluations counts calls of the guided score, each two net passes per sample."""
    check_callable("conditional_score_fn", conditional_score_fn)
    strength = check_real("guidance strength", strength, low=0.0)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    null_label = num_classes if null_label is None else check_int("null_label", null_label)
    labels = check_labels("label", label, num_classes, null_label=null_label)

    def guided_score(x, t):
        batch = x.shape[0]
        y = labels.to(x.device).expand(batch)
        if strength == 1:
            return conditional_score_fn(x, t, y)
        null = torch.full_like(y, null_label)
        if strength == 0:
            return conditional_score_fn(x, t, null)
        t2 = t.expand(batch) if t.ndim == 1 and t.shape[0] == 1 else t
        both = conditional_score_fn(torch.cat([x, x]), torch.cat([t2, t2]), torch.cat([y, null]))
        conditional, unconditional = both[:batch], both[batch:]
        return unconditional + strength * (conditional - unconditional)

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
    times, dt = time_grid(sde, steps, eps, dtype=torch.float64)
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

"""Controllable generation on 2-D Gaussian mixtures, where every conditional is known exactly.

Tolerances: sample means and variances are compared at K = 4.5 standard errors (as in
test_samplers: SE of a mean s / sqrt(n), of a variance s^2 sqrt(2 / (n - 1)) for Gaussian output),
and each check has a negative control that must fail the same check."""
import math

import pytest
import torch
from scipy import integrate

from sdelib.data import GaussianMixture, gaussian
from sdelib.controllable import classifier_guided_score, inpaint, replacement_moments
from sdelib.samplers import euler_maruyama
from sdelib.sde import VESDE, VPSDE

K = 4.5
EPS = 1e-3
MIXTURE = GaussianMixture([[-2.0, -1.0], [2.0, 1.5]], [[[1.0, 0.6], [0.6, 0.8]], [[0.5, -0.2], [-0.2, 0.4]]],
                          [0.4, 0.6])


def z_mean_var(samples, mean, var):
    """Standardised errors of the sample mean and variance of 1-D samples against (mean, var)."""
    n = samples.numel()
    samples = samples.double()
    return ((samples.mean() - mean) / math.sqrt(var / n)).item(), \
        ((samples.var() - var) / (var * math.sqrt(2 / (n - 1)))).item()


def test_condition_is_the_joint_density_divided_by_the_marginal():
    value = 0.7
    conditional = MIXTURE.condition(0, value)
    grid = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    joint = MIXTURE.log_prob(torch.stack([torch.full_like(grid, value), grid], dim=1)).exp()
    marginal = integrate.trapezoid(joint.numpy(), grid.numpy())          # p(x_0 = value)
    expected = (joint / marginal).log()
    assert torch.allclose(conditional.log_prob(grid[:, None]), expected, atol=1e-6)
    with pytest.raises(ValueError, match="index"):
        MIXTURE.condition(2, 0.0)


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=["ve", "vp"])
def test_sampling_with_the_exact_conditional_score_gives_the_conditional(sde):
    conditional = MIXTURE.condition(0, 0.7)                                # a 1-D mixture
    target = conditional.perturbed(sde, EPS)
    generator = torch.Generator().manual_seed(0)
    x_init = conditional.perturbed(sde, sde.T).sample(4000, generator)
    samples, _ = euler_maruyama(conditional.score_fn(sde), sde, (4000, 1), steps=300, generator=generator,
                                x_init=x_init)
    mean, var = target.mean().item(), target.covariance().item()
    z = z_mean_var(samples, mean, var)     # (a mixture's variance SE is not exactly Gaussian's; 4.5 covers it)
    assert max(map(abs, z)) < K, z
    joint_marginal = MIXTURE.perturbed(sde, EPS)                          # negative control: no conditioning
    z_wrong = z_mean_var(samples, joint_marginal.mean()[1].item(), joint_marginal.covariance()[1, 1].item())
    assert max(map(abs, z_wrong)) > K


DATA = gaussian([0.5, -1.0], [[1.0, 0.9], [0.9, 1.0]])                 # correlation 0.9


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=["ve", "vp"])
def test_replacement_method_has_the_predicted_bias(sde):
    value, steps, n = 2.0, 200, 6000
    observation = torch.tensor([value, 0.0], dtype=torch.float64).expand(n, 2)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    samples, nfe = inpaint(DATA.score_fn(sde), sde, observation, mask, steps=steps,
                           generator=torch.Generator().manual_seed(1))
    assert nfe == steps and bool((samples[:, 0] == value).all())          # known pixels returned exactly
    predicted = replacement_moments(DATA.means[0], DATA.covs[0], value, sde, steps=steps, eps=EPS)
    z = z_mean_var(samples[:, 1], *predicted)
    assert max(map(abs, z)) < K, (z, predicted)
    # The exact conditional of the (clean) data: N(-1 + 0.9 (2 - 0.5), 1 - 0.81); the replacement
    # method misses it by many standard errors: the bias the chapter shows.
    exact = (-1.0 + 0.9 * 1.5, 1.0 - 0.81)
    assert max(map(abs, z_mean_var(samples[:, 1], *exact))) > K


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=["ve", "vp"])
def test_replacement_moments_give_the_marginal_when_the_observation_is_uninformative(sde):
    # A check of the recursion that is not a run of its own equations: with correlation 0 the
    # observation carries no information, so the replacement method must give x_1's marginal
    # diffused to eps, N(m mu_1, m^2 + v). (mu_1 = 0 so that the prior matches p_T's mean: the
    # prior approximation (Song et al. 2021, Appendix D.2) is not what is tested here.)
    mean1, var1 = replacement_moments([0.5, 0.0], [[1.0, 0.0], [0.0, 1.0]], 2.0, sde, steps=2000)
    t = torch.tensor([EPS])
    expected = sde.mean_coeff(t).item() ** 2 + sde.marginal_std(t).item() ** 2
    # 2,000 Euler steps: O(dt) discretisation error, measured 1e-3 (VE) and 6e-4 (VP) in the variance
    assert mean1 == 0.0 and var1 == pytest.approx(expected, abs=3e-3)
    _, var_correlated = replacement_moments([0.5, 0.0], [[1.0, 0.9], [0.9, 1.0]], 2.0, sde, steps=2000)
    assert var_correlated < 0.5                      # with correlation, the observation does inform


@pytest.mark.parametrize("strength,component", [(1.0, 1), (0.0, None)], ids=["guided", "unguided"])
def test_guidance_with_the_exact_classifier_gives_the_chosen_component(strength, component):
    sde = VESDE(25.0)
    classifier = lambda x, t: MIXTURE.class_logits(x, sde, t)           # exact log p_t(k | x) + const
    score = classifier_guided_score(MIXTURE.score_fn(sde), classifier, 1, strength, num_classes=2)
    # With strength 1: s + grad log p_t(1 | x) = grad log p_t(x | 1), the component's own score.
    one = gaussian(MIXTURE.means[1], MIXTURE.covs[1])
    generator = torch.Generator().manual_seed(2)
    x_init = one.perturbed(sde, sde.T).sample(4000, generator)
    samples, _ = euler_maruyama(score, sde, (4000, 2), steps=300, generator=generator, x_init=x_init)
    target = one.perturbed(sde, EPS)
    z = [v for d in range(2) for v in z_mean_var(samples[:, d], target.mean()[d].item(),
                                                 target.covariance()[d, d].item())]
    # Negative control (strength 0): the unguided score pulls samples to both modes.
    assert (max(map(abs, z)) < K) == (component is not None), z


def test_controllable_generation_rejects_bad_input():
    sde = VESDE(25.0)
    observation = torch.zeros(4, 1, 28, 28)
    score = lambda x, t: -x
    with pytest.raises(ValueError, match="mask has shape"):
        inpaint(score, sde, observation, torch.ones(1, 28, 27), steps=3)
    with pytest.raises(ValueError, match="binary"):
        inpaint(score, sde, observation, torch.full((1, 28, 28), 0.5), steps=3)
    with pytest.raises(ValueError, match="0..9"):
        classifier_guided_score(score, lambda x, t: x, 10)
    with pytest.raises(ValueError, match="0..9"):
        classifier_guided_score(score, lambda x, t: x, torch.tensor([0, -1]))
    with pytest.raises(ValueError, match="strength"):
        classifier_guided_score(score, lambda x, t: x, 3, strength=-1.0)
    result = inpaint(score, sde, observation, torch.ones(1, 28, 28), steps=3)
    assert torch.equal(result.samples, observation)                     # all known: unchanged

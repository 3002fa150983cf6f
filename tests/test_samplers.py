"""Samplers driven by the exact score of a 2-D Gaussian mixture must reproduce the mixture.

The check: for statistics h(x) = (x1, x2, x1^2, x2^2, x1 x2, 1[x1 > 0]) the sample mean over n samples
is compared with its exact value under p_eps (the mixture diffused to the sampler's end time eps,
`GaussianMixture.perturbed`): |mean_n(h) - E h| < K * sd(h) / sqrt(n) for every statistic. These cover
means, covariances and the mode weight (the modes are > 4 std apart, so 1[x1 > 0] is the mode
label up to ~1e-5). K = 4.5: with 6 statistics per run and ~15 runs, the chance that a correct
sampler trips by noise alone is < 1e-3 (and the seeds are fixed). The discretisation bias of
250 EM / 150 PC steps was measured at under 1.7 standard errors at n = 4,000.

Each family has a negative control that must fail the same check: the score scaled by 0.9 (ODE),
0.8 (EM) or 0.7 (PC). The SDE samplers' noise, and PC's corrector even more, partly repairs a wrong
score, so a smaller scale is needed to be detectable at n = 4,000 (measured: EM 0.8 -> max |z| ~ 10,
PC 0.8 -> ~4.5, too close to K).

For VE SDEs the prior N(0, std(1)^2) is not p_1 when the data mean is not zero (Song et al. 2021, Appendix D.2); the runs
start from the exact p_1 (`x_init`) so the test measures the sampler, not the prior mismatch.
"""
import math

import pytest
import torch

from sdelib.data import GaussianMixture
from sdelib.samplers import (ODEConvergenceError, euler_maruyama, heun_ode, heun_time_grid,
                             predictor_corrector, probability_flow_ode, edm_stochastic, dpm_solver_sde)
from sdelib.sde import GeometricVESDE, SubVPSDE, VESDE, VPSDE, append_dims


def probability_flow_ode_torchdiffeq(*args, **kwargs):
    """The ODE sampler with torchdiffeq's dopri5 (solver='torchdiffeq')."""
    return probability_flow_ode(*args, solver="torchdiffeq", **kwargs)


def scaled_std(sde, t):
    return sde.scaled_std(t)


K = 4.5
EPS = 1e-3
MIXTURE = GaussianMixture([[-3.0, 0.0], [3.0, 1.0]], [[0.5, 0.3], [0.4, 0.6]], [0.3, 0.7])


def statistics(x):
    x = x.double()
    return torch.stack([x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1],
                        (x[:, 0] > 0).double()], dim=1)


def exact_statistics(mixture):
    mu, cov = mixture.mean(), mixture.covariance()
    second = cov + mu[:, None] * mu[None, :]
    return torch.stack([mu[0], mu[1], second[0, 0], second[1, 1], second[0, 1], mixture.weights[1]])


def z_scores(samples, sde):
    """Standardised errors of the six statistics against the exact p_eps."""
    h = statistics(samples)
    return (h.mean(0) - exact_statistics(MIXTURE.perturbed(sde, EPS))) / (h.std(0) / math.sqrt(h.shape[0]))


def run(sampler, sde, n, scale=1.0, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    x_init = MIXTURE.perturbed(sde, sde.T).sample(n, generator).float()
    samples, nfe = sampler(MIXTURE.score_fn(sde, scale), sde, (n, 2), generator=generator,
                           x_init=x_init, **kwargs)
    return samples, nfe


SDE_CASES = [
    ("em-ve", euler_maruyama, VESDE(25.0), dict(steps=250)),
    ("em-vp", euler_maruyama, VPSDE(), dict(steps=250)),
    ("em-subvp", euler_maruyama, SubVPSDE(), dict(steps=250)),
    ("pc-ve", predictor_corrector, VESDE(25.0), dict(steps=150, snr=0.16)),
    ("pc-vp", predictor_corrector, VPSDE(), dict(steps=150, snr=0.16)),
    ("pc-reverse-diffusion-vp", predictor_corrector, VPSDE(),
     dict(steps=150, snr=0.16, predictor="reverse_diffusion")),
    ("pc-reverse-diffusion-geometric-ve", predictor_corrector, GeometricVESDE(0.01, 50.0),
     dict(steps=150, snr=0.16, predictor="reverse_diffusion")),
]
ODE_CASES = [
    ("ode-scipy-ve", probability_flow_ode, VESDE(25.0)),
    ("ode-scipy-subvp", probability_flow_ode, SubVPSDE()),
    ("ode-torchdiffeq-vp", probability_flow_ode_torchdiffeq, VPSDE()),
    ("ode-torchdiffeq-geometric-ve", probability_flow_ode_torchdiffeq, GeometricVESDE(0.01, 50.0)),
]


@pytest.mark.parametrize("name,sampler,sde,kwargs", SDE_CASES, ids=[c[0] for c in SDE_CASES])
def test_sde_sampler_with_exact_score_reproduces_the_mixture(name, sampler, sde, kwargs):
    samples, nfe = run(sampler, sde, 4_000, **kwargs)
    z = z_scores(samples, sde)
    assert z.abs().max() < K, f"{name}: standardised errors {z.numpy().round(2)}"
    corrector_evals = kwargs["steps"] if sampler is predictor_corrector else 0
    assert nfe == kwargs["steps"] + corrector_evals


@pytest.mark.parametrize("name,sampler,sde,kwargs,scale", [SDE_CASES[1] + (0.8,), SDE_CASES[4] + (0.7,)],
                         ids=["em-vp", "pc-vp"])
def test_sde_sampler_with_scaled_score_fails_the_same_check(name, sampler, sde, kwargs, scale):
    samples, _ = run(sampler, sde, 4_000, scale=scale, **kwargs)
    assert z_scores(samples, sde).abs().max() > K


@pytest.mark.parametrize("name,sampler,sde", ODE_CASES, ids=[c[0] for c in ODE_CASES])
def test_probability_flow_ode_with_exact_score_reproduces_the_mixture(name, sampler, sde):
    samples, nfe = run(sampler, sde, 4_000)
    z = z_scores(samples, sde)
    assert z.abs().max() < K, f"{name}: standardised errors {z.numpy().round(2)}"
    assert 20 < nfe < 2000  # adaptive: a few dozen to a few hundred evaluations


@pytest.mark.parametrize("sampler", [probability_flow_ode, probability_flow_ode_torchdiffeq])
def test_probability_flow_ode_with_scaled_score_fails_the_same_check(sampler):
    samples, _ = run(sampler, VPSDE(), 4_000, scale=0.9)
    assert z_scores(samples, VPSDE()).abs().max() > K


HEUN_SDES = [VESDE(25.0), VPSDE(), SubVPSDE(), GeometricVESDE(0.01, 50.0)]


@pytest.mark.parametrize("sde", HEUN_SDES, ids=lambda s: s.name)
def test_heun_with_50_evaluations_reproduces_the_mixture_and_a_scaled_score_fails(sde):
    # The few-step solver passes the same K-standard-error check as the adaptive ones at 25 steps
    # (measured max |z| 2.1-3.2 across the four SDEs; 10 steps fails it for VP, 12-23).
    samples, nfe = run(heun_ode, sde, 4_000, steps=25)
    assert nfe == 50
    z = z_scores(samples, sde)
    assert z.abs().max() < K, f"standardised errors {z.numpy().round(2)}"
    wrong, _ = run(heun_ode, sde, 4_000, steps=25, scale=0.9)     # negative control (measured 10-26)
    assert z_scores(wrong, sde).abs().max() > K


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=lambda s: s.name)
def test_heun_converges_at_second_order_to_the_adaptive_solution(sde):
    x_init = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0)).double()
    reference, _ = probability_flow_ode(MIXTURE.score_fn(sde), sde, (200, 2), x_init=x_init,
                                        rtol=1e-9, atol=1e-9)
    errors = [(heun_ode(MIXTURE.score_fn(sde), sde, (200, 2), steps=n, x_init=x_init).samples
               - reference).abs().max().item() for n in (20, 40, 80)]
    # Heun's global error is O(h^2): doubling the steps divides it by ~4 (measured 3.9-4.6). A
    # first-order method would give ~2, a wrong slope would not converge to the reference at all.
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 6.0, errors
    assert errors[-1] < 0.03


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=lambda s: s.name)
@pytest.mark.parametrize("order,steps,control", [(2, 25, 0.8), (1, 100, 0.7)], ids=["heun", "euler"])
def test_edm_stochastic_reproduces_the_mixture_and_a_scaled_score_fails(sde, order, steps, control):
    # EDM Alg. 2 with fresh noise at every step (churn 30): the same K-standard-error check as the
    # other samplers. Measured max |z|: Heun steps, 25 (50 evaluations): 1.3 VE, 2.7 VP; Euler
    # steps need more of them, 100: 2.1, 2.9 (at 50 their first-order bias shows: 4.8, 7.8). The
    # noise partly repairs a wrong score, as the corrector does, so the controls are the 0.8-scaled
    # score for Heun (measured 8.2, 11.8; 0.9 gives 4.4, 6.6) and 0.7 for Euler (6.8, 7.5).
    samples, nfe = run(edm_stochastic, sde, 4_000, steps=steps, order=order, churn=30.0)
    assert nfe == order * steps
    z = z_scores(samples, sde)
    assert z.abs().max() < K, f"standardised errors {z.numpy().round(2)}"
    wrong, _ = run(edm_stochastic, sde, 4_000, steps=steps, order=order, churn=30.0, scale=control)
    assert z_scores(wrong, sde).abs().max() > K


def test_edm_stochastic_without_churn_is_heun_ode_and_with_churn_is_seeded():
    sde = VESDE(25.0)
    x_init = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(3))
    score = MIXTURE.score_fn(sde)
    plain = heun_ode(score, sde, (64, 2), steps=8, x_init=x_init).samples
    # heun_ode is edm_stochastic with churn 0; check that path against Heun's method written out
    # here (VE: m = 1, so y = x and sigma = std): d_i = -sigma_i s(x, t_i), EDM Alg. 1
    times = heun_time_grid(sde, 8, eps=EPS)
    sigmas = scaled_std(sde, times).float()
    times, x = times.float(), x_init.clone()
    for i in range(8):
        h = sigmas[i + 1] - sigmas[i]
        d = -sigmas[i] * score(x, times[i].expand(64))
        x_euler = x + h * d
        x = x + h * (d - sigmas[i + 1] * score(x_euler, times[i + 1].expand(64))) / 2
    assert torch.allclose(plain, x, rtol=1e-5, atol=1e-5)
    # without churn no noise is drawn: the generator does not matter
    no_churn = [edm_stochastic(score, sde, (64, 2), steps=8, churn=0.0, x_init=x_init,
                               generator=torch.Generator().manual_seed(seed)).samples for seed in (1, 2)]
    assert torch.equal(no_churn[0], no_churn[1]) and torch.equal(no_churn[0], plain)

    def sample(seed):
        return edm_stochastic(score, sde, (64, 2), steps=8, churn=30.0, x_init=x_init,
                               generator=torch.Generator().manual_seed(seed)).samples
    assert torch.equal(sample(1), sample(1))
    assert not torch.allclose(sample(1), sample(2))
    assert not torch.allclose(sample(1), plain)
    # noise only inside [churn_sigma_min, churn_sigma_max]: an empty window is heun_ode again
    window = edm_stochastic(score, sde, (64, 2), steps=8, churn=30.0, churn_sigma_min=100.0,
                             churn_sigma_max=200.0, x_init=x_init).samples
    assert torch.equal(plain, window)


@pytest.mark.parametrize("kwargs,match", [(dict(churn=-1.0), "churn"), (dict(noise_inflation=0.0), "noise_inflation"),
                                          (dict(churn_sigma_min=2.0, churn_sigma_max=1.0), "churn_sigma_min"),
                                          (dict(steps=0), "steps"), (dict(rho=-1.0), "rho"),
                                          (dict(order=3), "order")])
def test_edm_stochastic_rejects_bad_arguments(kwargs, match):
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match=match):
        edm_stochastic(MIXTURE.score_fn(sde), sde, (4, 2), **kwargs)


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE(), SubVPSDE()], ids=lambda s: s.name)
@pytest.mark.parametrize("settings,control", [(dict(steps=50, eta=1.0), 0.8),
                                              (dict(steps=49, eta=6.0, denoise=True), 0.7)], ids=["eta1", "eta6"])
def test_dpm_solver_sde_reproduces_the_mixture_and_a_scaled_score_fails(sde, settings, control):
    # SDE-DPM-Solver++(2M) with 50 evaluations: the K-standard-error check. eta 1 (eq. 6): measured
    # max |z| 1.3 VE, 1.0 VP, 1.9 sub-VP (at 25 steps VP / sub-VP show the bias, 4.0 / 6.0). eta 6
    # with the Tweedie step (the book's advice; its output is E[x_0 | x_eps], whose moments differ
    # from p_eps's by O(std(eps)^2) <= 1e-3, far below the SE): 1.8, 2.5, 2.0. The renewed noise
    # partly repairs a wrong score, more so with larger eta: a 0.9 scale gives 3.2-4.3, so the
    # controls are 0.8 for eta 1 (measured 8.8-10.2) and 0.7 for eta 6 (8.0-8.6).
    samples, nfe = run(dpm_solver_sde, sde, 4_000, order=2, **settings)
    assert nfe == 50
    z = z_scores(samples, sde)
    assert z.abs().max() < K, f"standardised errors {z.numpy().round(2)}"
    wrong, _ = run(dpm_solver_sde, sde, 4_000, order=2, scale=control, **settings)
    assert z_scores(wrong, sde).abs().max() > K


def point_mass_score(sde, point):
    """The exact score of data at one point: p_t = N(m(t) point, std(t)^2), so the denoiser D = point."""
    def score(x, t):
        mean, std = sde.marginal_prob(point.expand_as(x), t)
        return -(x - mean) / append_dims(std, x.ndim) ** 2
    return score


@pytest.mark.parametrize("order,eta", [(1, 1.0), (2, 1.0), (2, 0.5), (2, 0.0), (2, 2.0)])
def test_dpm_solver_sde_is_exact_when_the_denoiser_is_constant(order, eta):
    # Each step solves the reverse SDE exactly for a fixed D, so for data at one point (D = point for
    # every y) any number of steps keeps y = point + sigma z: after 4 steps x ~ N(m point, std^2) at
    # t = eps for VP, exactly. Mean and variance within K standard errors of n = 20,000 draws
    # (the variance's SE is std^2 sqrt(2 / n)); the 0.9-scaled score, whose D is wrong, must fail.
    sde, n, point = VPSDE(), 20_000, torch.tensor([1.5, -0.5])
    generator = torch.Generator().manual_seed(0)
    x_init = sde.mean_coeff(torch.tensor(1.0)) * point + sde.marginal_std(torch.tensor(1.0)) * torch.randn(n, 2, generator=generator)

    def z(scale):
        score = point_mass_score(sde, point)
        x, _ = dpm_solver_sde(lambda x, t: scale * score(x, t), sde, (n, 2), steps=4, order=order, eta=eta,
                              x_init=x_init, generator=generator)
        mean, std = sde.marginal_prob(point, torch.tensor(EPS))
        z_mean = (x.mean(0) - mean) / (std / math.sqrt(n))
        z_var = (x.var(0) - std ** 2) / (std ** 2 * math.sqrt(2 / n))
        return torch.cat([z_mean, z_var]).abs().max().item()
    assert z(1.0) < K
    assert z(0.9) > K


def test_dpm_solver_sde_first_order_step_is_the_ancestral_posterior():
    # order 1, eta 1 on VE (m = 1, sigma = std): y' = r^2 y + (1 - r^2) D + sigma' sqrt(1 - r^2) z with
    # r = sigma' / sigma and D = y + sigma^2 s(y): the posterior q(y' | y, x_0 = D), written out here.
    sde, steps = VESDE(25.0), 6
    x_init = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(3))
    score = MIXTURE.score_fn(sde)
    got = dpm_solver_sde(score, sde, (64, 2), steps=steps, order=1, eta=1.0, x_init=x_init,
                         generator=torch.Generator().manual_seed(4)).samples
    times = heun_time_grid(sde, steps, eps=EPS)
    sigmas = scaled_std(sde, times).float()
    times, y, generator = times.float(), x_init.clone(), torch.Generator().manual_seed(4)
    for i in range(steps):
        r2 = (sigmas[i + 1] / sigmas[i]) ** 2
        denoised = y + sigmas[i] ** 2 * score(y, times[i].expand(64))
        y = r2 * y + (1 - r2) * denoised + sigmas[i + 1] * (1 - r2).sqrt() * torch.randn(64, 2, generator=generator)
    assert torch.allclose(got, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=lambda s: s.name)
def test_dpm_solver_without_noise_is_a_second_order_ode_solver(sde):
    # eta = 0 leaves DPM-Solver++(2M) for the probability-flow ODE: no noise drawn (the generator does
    # not matter) and a global error O(h^2) against the adaptive solution: doubling the steps divides
    # it by ~4 once the steps are small (80 -> 160 -> 320: measured 3.5, 3.8 on VE and VP; at 20 -> 40
    # still 2.4-2.7; order 1 gives 1.4-2.5).
    x_init = sde.prior_sampling((200, 2), generator=torch.Generator().manual_seed(0)).double()
    score = MIXTURE.score_fn(sde)
    reference, _ = probability_flow_ode(score, sde, (200, 2), x_init=x_init, rtol=1e-9, atol=1e-9)

    def solve(steps, seed=0):
        return dpm_solver_sde(score, sde, (200, 2), steps=steps, order=2, eta=0.0, x_init=x_init,
                              generator=torch.Generator().manual_seed(seed)).samples
    assert torch.equal(solve(20, seed=1), solve(20, seed=2))
    errors = [(solve(n) - reference).abs().max().item() for n in (80, 160, 320)]
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.0 < coarse / fine < 6.0, errors
    assert errors[-1] < 0.01


@pytest.mark.parametrize("kwargs,match", [(dict(eta=-0.1), "eta"), (dict(eta=float("nan")), "eta"), (dict(order=3), "order"),
                                          (dict(steps=0), "steps"), (dict(rho=0.0), "rho")])
def test_dpm_solver_sde_rejects_bad_arguments(kwargs, match):
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match=match):
        dpm_solver_sde(MIXTURE.score_fn(sde), sde, (4, 2), **kwargs)


def test_heun_time_grid_follows_the_edm_noise_levels():
    sde = VPSDE()
    times = heun_time_grid(sde, 10, eps=1e-3, rho=7.0)
    sigma = scaled_std(sde, times)
    s_max, s_min = sigma[0].item(), sigma[-1].item()
    for i, value in enumerate(sigma.tolist()):        # EDM eq. (5), evaluated independently
        expected = (s_max ** (1 / 7) + i / 10 * (s_min ** (1 / 7) - s_max ** (1 / 7))) ** 7
        assert value == pytest.approx(expected, rel=1e-9)
    assert times[0] == 1.0 and times[-1] == 1e-3 and bool((times[1:] < times[:-1]).all())
    with pytest.raises(ValueError, match="rho"):
        heun_ode(MIXTURE.score_fn(sde), sde, (4, 2), steps=5, rho=0.0)
    with pytest.raises(ValueError, match="steps"):
        heun_ode(MIXTURE.score_fn(sde), sde, (4, 2), steps=0)


def test_scipy_and_torchdiffeq_ode_solvers_agree_on_the_same_start():
    sde = VPSDE()
    x_init = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    a, _ = probability_flow_ode(MIXTURE.score_fn(sde), sde, (50, 2), x_init=x_init, rtol=1e-7, atol=1e-7)
    b, _ = probability_flow_ode_torchdiffeq(MIXTURE.score_fn(sde), sde, (50, 2), x_init=x_init,
                                            rtol=1e-7, atol=1e-7)
    # Both are 5th-order Dormand-Prince solvers; at rtol = atol = 1e-7 on an O(1)-scale state their
    # global errors are ~1e-5 (measured ~1e-3 at the default 1e-5); a wrong drift moves samples by O(1).
    assert (a - b).abs().max() < 1e-4


def test_euler_maruyama_is_seeded_and_calls_back_every_step():
    sde = VESDE(25.0)
    calls = []
    first, _ = euler_maruyama(MIXTURE.score_fn(sde), sde, (8, 2), steps=20,
                              generator=torch.Generator().manual_seed(7),
                              callback=lambda i, t, x: calls.append((i, t, x.shape)))
    second, _ = euler_maruyama(MIXTURE.score_fn(sde), sde, (8, 2), steps=20,
                               generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    assert [c[0] for c in calls] == list(range(20))
    assert calls[0][1] == pytest.approx(1.0) and calls[-1][1] == pytest.approx(EPS)


def test_denoise_adds_one_evaluation_and_applies_tweedie():
    sde = VPSDE()
    generator = torch.Generator().manual_seed(0)
    x_init = torch.randn(16, 2, generator=generator)
    plain, nfe = euler_maruyama(MIXTURE.score_fn(sde), sde, (16, 2), steps=10, x_init=x_init,
                                generator=torch.Generator().manual_seed(1))
    denoised, nfe_denoised = euler_maruyama(MIXTURE.score_fn(sde), sde, (16, 2), steps=10, x_init=x_init,
                                            generator=torch.Generator().manual_seed(1), denoise=True)
    t = torch.full((16,), EPS)
    std, m = sde.marginal_std(t)[:, None], sde.mean_coeff(t)[:, None]
    expected = (plain + std ** 2 * MIXTURE.score_fn(sde)(plain, t)) / m
    assert nfe_denoised == nfe + 1
    assert torch.allclose(denoised, expected, atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(snr=0.0), "snr"), (dict(snr=-1.0), "snr"),
    (dict(predictor="heun"), "predictor"), (dict(eps=0.0), "eps"), (dict(eps=1.5), "eps"),
])
def test_predictor_corrector_rejects_bad_arguments(kwargs, match):
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match=match):
        predictor_corrector(MIXTURE.score_fn(sde), sde, (4, 2), **kwargs)


def test_samplers_reject_bad_shapes():
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match="shape"):
        euler_maruyama(MIXTURE.score_fn(sde), sde, (4,), steps=5)
    with pytest.raises(ValueError, match="x_init has shape"):
        euler_maruyama(MIXTURE.score_fn(sde), sde, (4, 2), steps=5, x_init=torch.zeros(3, 2))


def exploding_score(x, t):
    return torch.exp(50 * x.abs()) * torch.sign(x)   # overflows to inf within a few steps


def stiff_score(x, t):
    return 1e4 * torch.sin(1e3 * x)                   # finite, but needs tiny steps everywhere


@pytest.mark.parametrize("sampler", [probability_flow_ode, probability_flow_ode_torchdiffeq])
@pytest.mark.parametrize("score,match", [(exploding_score, "not finite"), (stiff_score, "more than 300")])
def test_ode_that_cannot_converge_raises_instead_of_hanging(sampler, score, match):
    with pytest.raises(ODEConvergenceError, match=match):
        sampler(score, VPSDE(), (4, 2), generator=torch.Generator().manual_seed(0), max_nfe=300)

"""Log-likelihoods by the probability-flow ODE against closed-form Gaussian densities."""
import math

import pytest
import torch
from helpers import assert_close

from sdelib.data import gaussian
from sdelib.likelihood import (bits_per_dim, dequantize, exact_divergence, hutchinson_divergence,
                               image_bpd, make_probe, ode_likelihood)
from sdelib.ode import ODEConvergenceError
from sdelib.samplers import probability_flow_ode
from sdelib.sde import SubVPSDE, VESDE, VPSDE

EPS = 1e-5
DATA = gaussian([1.0, -0.5], [[0.8, 0.3], [0.3, 0.5]])


def points(n=64, seed=0):
    return DATA.sample(n, torch.Generator().manual_seed(seed))


def exact_prior(data, sde):
    """log p_T of the diffused data: removes the prior approximation (Song et al. 2021, Appendix D.2) from the test."""
    p_T = data.perturbed(sde, sde.T)
    return lambda z: p_T.log_prob(z)


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE(), SubVPSDE()], ids=["ve", "vp", "subvp"])
@pytest.mark.parametrize("solver", ["scipy", "torchdiffeq"])
def test_ode_likelihood_with_exact_score_equals_closed_form_density(sde, solver):
    x = points()
    result = ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence="exact", solver=solver,
                            rtol=1e-7, atol=1e-7, prior_logp=exact_prior(DATA, sde))
    truth = DATA.log_prob(x, sde, torch.full((x.shape[0],), EPS, dtype=torch.float64))
    # The only error left is the solver's (rtol = atol = 1e-7 on O(1) states over ~1e2 steps): 1e-4
    # nats is far above it and far below any modelling error (the 0.9-scaled score gives > 0.05).
    assert (result.log_p - truth).abs().max() < 1e-4


def test_ode_likelihood_with_scaled_score_is_visibly_wrong():
    sde = VPSDE()
    x = points()
    result = ode_likelihood(DATA.score_fn(sde, scale=0.9), sde, x, eps=EPS, divergence="exact",
                            rtol=1e-7, atol=1e-7, prior_logp=exact_prior(DATA, sde))
    truth = DATA.log_prob(x, sde, torch.full((x.shape[0],), EPS, dtype=torch.float64))
    assert (result.log_p - truth).abs().mean() > 0.05


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE()], ids=["vp", "subvp"])
def test_a_large_eps_gives_the_density_of_the_data_plus_scaled_noise(sde):
    # With eps = 0.3, m(eps) is 0.63 (VP): the model's x_0 = x(eps) / m(eps) is the data plus
    # sigma~(eps) z, so its density is N(mu, Sigma + sigma~^2 I) in closed form.
    eps, x = 0.3, points()
    result = ode_likelihood(DATA.score_fn(sde), sde, x, eps=eps, divergence="exact",
                            rtol=1e-7, atol=1e-7, prior_logp=exact_prior(DATA, sde))
    sigma = float(sde.scaled_std(torch.tensor(eps, dtype=torch.float64)))
    truth = torch.distributions.MultivariateNormal(
        DATA.means[0], DATA.covs[0] + sigma ** 2 * torch.eye(2, dtype=torch.float64)).log_prob(x)
    assert (result.log_p - truth).abs().max() < 1e-4              # the solver's error, as above
    # the density of x(eps) read at x itself, without the change of variables, is far off
    uncorrected = DATA.log_prob(x, sde, torch.full((x.shape[0],), eps, dtype=torch.float64))
    assert (uncorrected - truth).abs().mean() > 0.1


def test_prior_approximation_error_is_the_kl_of_p1_from_the_prior():
    """Song et al. 2021, Appendix D.2: replacing p_1 by the prior N(0, std(1)^2 I) for VE sigma = 25 costs, averaged over
    x ~ p_0, exactly KL(p_1 || prior) nats (about |mu|^2 / (2 std(1)^2) when std(1) is large)."""
    sde = VESDE(25.0)
    mu = torch.tensor([3.0, -2.0], dtype=torch.float64)
    data = gaussian(mu, torch.eye(2, dtype=torch.float64) * 0.25)
    half = data.sample(128, torch.Generator().manual_seed(1))
    # Antithetic pairs x, 2 mu - x: the flow of this symmetric p_0 is affine and symmetric about mu,
    # so the term linear in z - mu, which dominates the gap's variance, cancels within each pair.
    x = torch.cat([half, 2 * mu - half])
    with_prior = ode_likelihood(data.score_fn(sde), sde, x, eps=EPS, divergence="exact", rtol=1e-7, atol=1e-7)
    truth = data.log_prob(x, sde, torch.full((x.shape[0],), EPS, dtype=torch.float64))
    per_pair = ((truth - with_prior.log_p).view(2, -1)).mean(dim=0)   # i.i.d. over the 128 pairs
    gap, standard_error = per_pair.mean().item(), per_pair.std().item() / math.sqrt(per_pair.numel())
    var1 = data.perturbed(sde, sde.T).covariance()[0, 0].item()       # p_1 = N(mu, var1 I)
    var0 = sde.prior_std ** 2
    kl = 0.5 * sum(var1 / var0 + m ** 2 / var0 - 1 - math.log(var1 / var0) for m in mu.tolist())
    # 4 standard errors of the 128 pair means, plus the solver's 1e-4 nats.
    assert abs(gap - kl) < 4 * standard_error + 1e-4
    # Negative control: the gap is not zero, i.e. the test can tell the prior from p_1 at this n.
    assert abs(gap) > 4 * standard_error + 1e-4


def test_ode_maps_data_to_prior_and_back():
    sde = VPSDE()
    x = points(128)
    z = ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence="exact", rtol=1e-8, atol=1e-8).z
    back, _ = probability_flow_ode(DATA.score_fn(sde), sde, x.shape, eps=EPS, x_init=z, rtol=1e-8, atol=1e-8)
    # Deterministic, invertible flow: the round trip is limited by the solver tolerance (1e-8 per step).
    assert (back - x).abs().max() < 1e-4
    wrong, _ = probability_flow_ode(DATA.score_fn(sde, scale=0.9), sde, x.shape, eps=EPS, x_init=z)
    assert (wrong - x).abs().max() > 0.1  # negative control: another score does not invert the map


def test_hutchinson_divergence_is_unbiased_for_gaussian_and_rademacher_probes():
    sde = VESDE(25.0)
    drift = sde.reverse(DATA.score_fn(sde), probability_flow=True).drift
    n_probes = 4000
    x = points(1).expand(n_probes, 2).clone()
    t = torch.full((n_probes,), 0.3, dtype=torch.float64)
    _, exact = exact_divergence(drift, x, t)
    generator = torch.Generator().manual_seed(2)
    for kind in ("gaussian", "rademacher"):
        _, estimate = hutchinson_divergence(drift, x, t, make_probe(x, kind, generator))
        standard_error = estimate.std() / math.sqrt(n_probes)
        # K = 4 standard errors; negative control: a probe scaled by 1.1 is biased by 21 %.
        assert (estimate.mean() - exact[0]).abs() < 4 * standard_error
        _, biased = hutchinson_divergence(drift, x, t, 1.1 * make_probe(x, kind, generator))
        assert (biased.mean() - exact[0]).abs() > 4 * biased.std() / math.sqrt(n_probes)


def test_hutchinson_log_likelihood_agrees_with_exact_within_standard_error():
    sde = VPSDE()
    x = points(256, seed=4)
    exact = ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence="exact")
    for kind in ("gaussian", "rademacher"):
        estimate = ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence=kind,
                                  generator=torch.Generator().manual_seed(5))
        diff = estimate.log_p - exact.log_p
        assert diff.mean().abs() < 4 * diff.std() / math.sqrt(len(diff))


def test_bits_per_dim_of_the_uniform_density_is_eight():
    """A density of 1 on [0, 1)^D puts probability 256^-D on each bin: exactly 8 bits per dimension."""
    log_p = torch.zeros(3, dtype=torch.float64)
    assert torch.allclose(bits_per_dim(log_p, 784), torch.full((3,), 8.0, dtype=torch.float64))
    # density 1/2^D on [-1, 1)^D: 256 bins of width 2/256 per dim -> 7 bits with offset 7
    assert torch.allclose(bits_per_dim(torch.full((1,), -784 * math.log(2.0)), 784, offset=7.0),
                          torch.full((1,), 8.0))


def test_dequantize_stays_inside_each_pixels_bin():
    images = torch.randint(0, 256, (4, 1, 28, 28)).float() / 255.0
    x = dequantize(images, torch.Generator().manual_seed(0))
    k = torch.round(images * 255)
    assert ((x >= k / 256) & (x < (k + 1) / 256)).all()


@pytest.mark.parametrize("images,match", [
    (torch.full((2, 1, 28, 28), 1.5), r"\[0, 1\]"),
    (torch.full((2, 1, 28, 28), -0.1), r"\[0, 1\]"),
    (torch.zeros(2, 784), "shape"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
])
def test_image_bpd_rejects_bad_images(images, match):
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match=match):
        image_bpd(lambda x, t: -x, sde, images)


def test_ode_likelihood_rejects_non_finite_points_naming_them():
    x = points(4)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"\[2\]"):
        ode_likelihood(DATA.score_fn(VPSDE()), VPSDE(), x)


@pytest.mark.parametrize("score,match", [
    (lambda x, t: torch.exp(50 * x.abs()) * torch.sign(x), "not finite"),
    (lambda x, t: 1e4 * torch.sin(1e3 * x), "more than 200"),
], ids=["exploding", "stiff"])
def test_ode_likelihood_that_cannot_converge_raises(score, match):
    with pytest.raises(ODEConvergenceError, match=match):
        ode_likelihood(score, VPSDE(), points(4), divergence="gaussian", max_nfe=200,
                       generator=torch.Generator().manual_seed(0))


def test_both_solvers_with_the_same_probes_give_the_same_hutchinson_estimate():
    sde = VPSDE()
    x = points(32)
    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(4))
    runs = [ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence="rademacher", probe=probe,
                           solver=solver, rtol=1e-7, atol=1e-7) for solver in ("scipy", "torchdiffeq")]
    # Identical integrands: only the two solvers' errors (~1e-5 at these tolerances) remain.
    assert (runs[0].log_p - runs[1].log_p).abs().max() < 1e-4
    other = ode_likelihood(DATA.score_fn(sde), sde, x, eps=EPS, divergence="rademacher", rtol=1e-7, atol=1e-7,
                           generator=torch.Generator().manual_seed(5))
    assert (other.log_p - runs[0].log_p).abs().max() > 1e-3      # other probes: another estimate
    with pytest.raises(ValueError, match="probe has shape"):
        ode_likelihood(DATA.score_fn(sde), sde, x, probe=probe[:3])


def test_dataset_bpd_does_not_depend_on_the_batch_size():
    """One probe per image drawn up front: batches of 2 and of 5 give the same figures (the ODE
    solves differ only by the adaptive steps each batch takes: rtol 1e-6 keeps that below 1e-4)."""
    from sdelib.likelihood import dataset_bpd, make_probe

    sde = VESDE(25.0)
    data = gaussian(torch.tensor([0.5, 0.2], dtype=torch.float64),
                    torch.tensor([[0.1, 0.08], [0.08, 0.1]], dtype=torch.float64))   # correlated
    x = data.sample(6, generator=torch.Generator().manual_seed(0)).reshape(6, 1, 1, 2)

    def score(x_t, t):
        return data.score_fn(sde)(x_t.reshape(-1, 2), t).reshape(x_t.shape)

    probe = make_probe(x, "rademacher", torch.Generator().manual_seed(1))
    kwargs = dict(progress=False, dtype=torch.float64, rtol=1e-6, atol=1e-6, solver="scipy")
    small = dataset_bpd(score, sde, x, probe, batch_size=2, **kwargs)
    large = dataset_bpd(score, sde, x, probe, batch_size=5, **kwargs)
    assert len(small.nfe) == 3 and len(large.nfe) == 2 and small.bpd.shape == (6,)
    assert (small.bpd - large.bpd).abs().max() < 1e-4
    other = dataset_bpd(score, sde, x, make_probe(x, "rademacher", torch.Generator().manual_seed(2)),
                        batch_size=2, **kwargs)
    assert (other.bpd - small.bpd).abs().max() > 1e-3     # other probes: another estimate


def point_mass_score(sde, c):
    """The exact score of data at the single point c: p_t = N(m c, std^2), s = (m c - x) / std^2."""
    def score(x, t):
        shape = (-1,) + (1,) * (x.ndim - 1)
        return (sde.mean_coeff(t).reshape(shape) * c - x) / sde.marginal_std(t).reshape(shape) ** 2
    return score


@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE()], ids=["ve", "vp"])
def test_within_band_keeps_the_score_inside_the_band_and_a_constant_denoiser_everywhere(sde):
    """Inside [m low - k std, m high + k std] the banded score is the score itself; outside it the
    denoiser is taken at the band's edge, so a score whose denoiser is constant (data at one point
    in the range) is unchanged everywhere. A denoiser that moves with x (the control) is changed."""
    from sdelib.likelihood import within_band

    t = torch.tensor([1e-3, 0.3])
    shape = (2, 1, 1, 1)
    m, std = sde.mean_coeff(t).reshape(shape), sde.marginal_std(t).reshape(shape)
    inside = torch.cat([m * 0 - 3.9 * std, m * 0.5, m * 1 + 3.9 * std], dim=1)
    outside = torch.cat([m * 0 - 4.5 * std, m * 1 + 6 * std, m * 0 - 40 * std], dim=1)
    moving = lambda x, t: -x / sde.marginal_std(t).reshape(shape) ** 2 * 0.5  # noqa: E731
    point = point_mass_score(sde, 0.3)
    assert torch.equal(within_band(moving, sde)(inside, t), moving(inside, t))
    assert_close(within_band(point, sde)(outside, t), point(outside, t), rtol=1e-5)
    assert not torch.allclose(within_band(moving, sde)(outside, t), moving(outside, t), rtol=0.1)


def test_within_band_stops_a_runaway_that_a_net_outside_its_inputs_would_start():
    """A net exact inside the band but pushing outward beyond it (as a net may answer on inputs it
    never saw) carries a point that starts outside far off, and its likelihood with it; the banded
    net never asks the net there and gives the exact density N(x; c, std(eps)^2) of a point mass."""
    from sdelib.likelihood import within_band

    sde, c, eps = VESDE(25.0), 0.05, 1e-3
    exact = point_mass_score(sde, c)
    shape = (-1, 1, 1, 1)

    def broken(x, t):
        std = sde.marginal_std(t).reshape(shape)
        return exact(x, t) + 3 * (x - x.clamp(-4 * std, 1 + 4 * std)) / std ** 2

    std_eps = sde.marginal_std(torch.tensor(eps)).item()
    x = torch.full((1, 1, 2, 2), c - 6 * std_eps)                      # 2 std below the band
    p_T = torch.distributions.Normal(c, sde.marginal_std(torch.tensor(1.0)).item())
    prior = lambda z: p_T.log_prob(z).flatten(1).sum(1)                # noqa: E731
    closed = torch.distributions.Normal(c, std_eps).log_prob(x).sum().item()
    kwargs = dict(eps=eps, divergence="exact", prior_logp=prior, rtol=1e-6, atol=1e-6)
    banded = ode_likelihood(within_band(broken, sde), sde, x, **kwargs).log_p.item()
    assert banded == pytest.approx(closed, abs=1e-3)
    assert abs(ode_likelihood(broken, sde, x, **kwargs).log_p.item() - closed) > 10

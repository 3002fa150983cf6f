"""Tests of sdelib.losses.dsm_loss against the theory of denoising score matching.

For x_t = m(t) x_0 + std(t) z the std2-weighted loss is E |s(x_t, t) std(t) + z|^2, minimised by the
true score s = grad log p_t. For data N(mu, s0^2 I) in D dimensions, p_t = N(m mu, S I) with
S = m^2 s0^2 + v, and with x_0 = mu + s0 e:
    s std + z = -std (m s0 e + std z) / S + z = (m^2 s0^2 z - std m s0 e) / S,
so, given t, the per-sample loss is q(t) chi^2_D, q = m^2 s0^2 (m^2 s0^2 + v) / S^2 = m^2 s0^2 / S,
and E[loss] = D E_t[m^2 s0^2 / (m^2 s0^2 + v)], t ~ U(eps, 1), computed below with scipy's quad.
(Equivalently D - std^2 E|s_true|^2 per unit: the minimum of E|s std + z|^2.)

m(t), v(t), g(t) are written here from the paper (Song et al. 2021, eqs. 30-34), not read from sdelib.
"""
import math

import numpy as np
import pytest
import torch
from helpers import assert_close
from scipy import stats
from scipy.integrate import quad

from sdelib.data import GaussianMixture, gaussian
from sdelib.losses import WEIGHTINGS, dsm_loss
from sdelib.sde import SubVPSDE, VESDE, VPSDE, append_dims

F64 = torch.float64


EPS = 1e-5
K_SE = 4.0   # 4 standard errors: P(|N(0,1)| > 4) = 6e-5 per check


def _sdes():
    return {"ve": VESDE(25.0), "vp": VPSDE(0.1, 20.0), "subvp": SubVPSDE(0.1, 20.0)}


def truth(name, t):
    """(m(t), v(t), g(t)^2) from the paper's definitions (float or numpy array)."""
    t = np.asarray(t, dtype=np.float64)
    if name == "ve":
        sigma = 25.0
        return np.ones_like(t), (sigma ** (2 * t) - 1) / (2 * np.log(sigma)), sigma ** (2 * t)
    beta = 0.1 + t * (20.0 - 0.1)
    B = 0.1 * t + 0.5 * t ** 2 * (20.0 - 0.1)
    if name == "vp":
        return np.exp(-0.5 * B), 1 - np.exp(-B), beta
    if name == "subvp":
        return np.exp(-0.5 * B), (1 - np.exp(-B)) ** 2, beta * (1 - np.exp(-2 * B))
    raise KeyError(name)


def _common_random_numbers(n, dim, seed):
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=gen, dtype=F64) * (1.0 - EPS) + EPS
    z = torch.randn(n, dim, generator=gen, dtype=F64)
    return gen, t, z


def _paired_excess(loss_wrong, loss_exact):
    """Mean and standard error of the per-sample paired difference."""
    d = loss_wrong - loss_exact
    return d.mean().item(), d.std().item() / math.sqrt(d.numel())


# ------------------------------------------------------------------------------------------------
# The exact score minimises the loss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_exact_score_of_gaussian_data_minimises_the_dsm_loss(name):
    sde = _sdes()[name]
    data = gaussian([1.0, -0.5], [[0.6, 0.25], [0.25, 0.3]])    # correlated 2-D Gaussian
    n = 10_000
    gen, t, z = _common_random_numbers(n, 2, seed=10)
    x0 = data.sample(n, generator=gen)
    exact = data.score_fn(sde)

    def shifted(x, t):
        return exact(x, t) + 0.1

    loss_exact = dsm_loss(exact, sde, x0, t=t, z=z, reduce=False)
    # The excess of a wrong score s' is E[std^2 |s' - s|^2] > 0. With the same (x0, t, z) for both
    # losses, the paired difference's SE is small: each wrong score is > 20 SE worse here, and we
    # require > k = 4 SE (one-sided P(N(0,1) > 4) = 3e-5 of a false pass if there were no excess).
    for wrong in (data.score_fn(sde, scale=0.9), data.score_fn(sde, scale=1.1), shifted):
        excess, se = _paired_excess(dsm_loss(wrong, sde, x0, t=t, z=z, reduce=False), loss_exact)
        assert excess > K_SE * se, (excess, se)
    # Negative control: the exact score compared with itself shows no excess.
    excess, se = _paired_excess(dsm_loss(exact, sde, x0, t=t, z=z, reduce=False), loss_exact)
    assert excess == 0.0 and not excess > K_SE * se
    # Negative control: with the residual's sign flipped (s std - z, a classic slip) the exact
    # score is no longer the minimiser: the 0.9-scaled score wins, so the check above has power
    # to catch a wrong loss.
    mean, std = sde.marginal_prob(x0, t)
    x_t = mean + std[:, None] * z

    def flipped(score_fn):
        return (score_fn(x_t, t) * std[:, None] - z).pow(2).sum(1)

    excess, se = _paired_excess(flipped(data.score_fn(sde, scale=0.9)), flipped(exact))
    assert excess < -K_SE * se


def _closed_form_dsm_loss(name, s0, dim):
    """D E_t[m^2 s0^2 / (m^2 s0^2 + v)], t ~ U(EPS, 1) (see the module docstring)."""

    def q(t):
        m, v, _ = truth(name, t)
        return float(m ** 2 * s0 ** 2 / (m ** 2 * s0 ** 2 + v))

    # q falls from 1 to ~0 within t ~ 0.1: give quad the break points.
    integral, err = quad(q, EPS, 1.0, points=[1e-3, 1e-2, 0.1], epsabs=1e-12, epsrel=1e-10,
                         limit=200)
    assert err < 1e-8
    return dim * integral / (1.0 - EPS)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_monte_carlo_dsm_loss_of_the_exact_score_matches_its_closed_form(name):
    sde = _sdes()[name]
    dim, s0, n = 8, 0.1, 20_000
    mu = torch.linspace(-1.0, 2.0, dim, dtype=F64)
    data = gaussian(mu, s0 ** 2 * torch.eye(dim, dtype=F64))
    gen, t, z = _common_random_numbers(n, dim, seed=11)
    x0 = data.sample(n, generator=gen)
    expected = _closed_form_dsm_loss(name, s0, dim)

    losses = dsm_loss(data.score_fn(sde), sde, x0, t=t, z=z, reduce=False)
    se = losses.std().item() / math.sqrt(n)       # SE of the mean of n i.i.d. per-sample losses
    assert abs(losses.mean().item() - expected) < K_SE * se, (losses.mean().item(), expected, se)
    # Negative control: the 0.9-scaled score's loss is higher by about 0.01 D E_t[v/S], which is
    # ~9 SE (VP) to ~13 SE (VE) at these sizes (s0 = 0.1 keeps q(t), hence the loss's spread,
    # small); with the same (x0, t, z) it sits that far beyond the exact loss's own deviation
    # (|z| < 4 above), so it falls outside the k = 4 band.
    losses_09 = dsm_loss(data.score_fn(sde, scale=0.9), sde, x0, t=t, z=z, reduce=False)
    assert abs(losses_09.mean().item() - expected) > K_SE * se
    # the batch mean (reduce=True) is the mean of the per-sample losses
    reduced = dsm_loss(data.score_fn(sde), sde, x0, t=t, z=z)
    assert reduced.item() == pytest.approx(losses.mean().item(), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# Definition, weightings and bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 3), (4, 1, 28, 28)])
def test_zero_score_loss_is_the_squared_noise(shape):
    """With s = 0 the residual s std + z is z: the loss is |z|^2 summed over data dimensions."""
    sde = VPSDE(0.1, 20.0)
    gen = torch.Generator().manual_seed(12)
    x0 = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.rand(shape[0], generator=gen, dtype=F64) * 0.9 + 0.1
    z = torch.randn(shape, generator=gen, dtype=F64)
    per_sample = dsm_loss(lambda x, t: torch.zeros_like(x), sde, x0, t=t, z=z, reduce=False)
    assert_close(per_sample, z.pow(2).reshape(shape[0], -1).sum(1), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_likelihood_weighting_is_g2_over_std2_times_the_std2_loss(name):
    sde = _sdes()[name]
    gen = torch.Generator().manual_seed(13)
    n = 64
    data = GaussianMixture([[2.0, 0.0], [-2.0, 1.0]], [[0.3, 0.3], [0.5, 0.2]])
    x0 = data.sample(n, generator=gen)
    t = torch.rand(n, generator=gen, dtype=F64) * 0.99 + 0.01
    z = torch.randn(n, 2, generator=gen, dtype=F64)
    score = data.score_fn(sde, scale=0.8)                 # any score: the identity is per sample
    std2 = dsm_loss(score, sde, x0, t=t, z=z, weighting="std2", reduce=False)
    lik = dsm_loss(score, sde, x0, t=t, z=z, weighting="likelihood", reduce=False)
    _, v, g2 = truth(name, t.numpy())
    assert_close(lik, torch.as_tensor(g2 / v) * std2, rtol=1e-10, atol=0)
    flow = dsm_loss(score, sde, x0, t=t, z=z, weighting="flow_matching", reduce=False)
    assert_close(flow, torch.as_tensor(g2 ** 2 / (4 * v)) * std2, rtol=1e-10, atol=0)
    assert set(WEIGHTINGS) == {"std2", "likelihood", "flow_matching", "edm"}  # edm: test_edm.py


def test_random_t_and_z_are_seeded_and_t_lies_in_eps_one():
    sde = VESDE(25.0)
    x0 = torch.zeros(500, 2, dtype=F64)
    seen = []

    def recording_score(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    a = dsm_loss(recording_score, sde, x0, eps=0.2, generator=torch.Generator().manual_seed(14),
                 reduce=False)
    b = dsm_loss(recording_score, sde, x0, eps=0.2, generator=torch.Generator().manual_seed(14),
                 reduce=False)
    assert torch.equal(a, b) and torch.equal(seen[0], seen[1])
    assert bool(((seen[0] >= 0.2) & (seen[0] <= 1.0)).all())
    # with s = 0 the per-sample loss is chi^2_2: mean 2 within k = 4 SE (SE = sqrt(4 / n))
    assert abs(a.mean().item() - 2.0) < K_SE * math.sqrt(4.0 / 500)


def test_unknown_weighting_is_rejected():
    sde = VPSDE(0.1, 20.0)
    with pytest.raises(ValueError) as info:
        dsm_loss(lambda x, t: x, sde, torch.zeros(4, 2), weighting="uniform")
    assert "uniform" in str(info.value)
    for choice in WEIGHTINGS:
        assert choice in str(info.value)


@pytest.mark.parametrize("z_shape", [(4, 3), (3, 2), (4, 2, 1)])
def test_noise_of_the_wrong_shape_is_rejected(z_shape):
    sde = VPSDE(0.1, 20.0)
    with pytest.raises(ValueError, match="shape"):
        dsm_loss(lambda x, t: x, sde, torch.zeros(4, 2), z=torch.zeros(z_shape),
                 t=torch.full((4,), 0.5))


def test_loss_works_on_image_shaped_batches_with_float32():
    """Shapes of the MNIST chapters: (B, 1, 28, 28) float32, per-sample sums over 784 pixels."""
    sde = VESDE(25.0)
    gen = torch.Generator().manual_seed(15)
    x0 = torch.rand(3, 1, 28, 28, generator=gen)
    t = torch.tensor([0.1, 0.5, 1.0])
    z = torch.randn(3, 1, 28, 28, generator=gen)

    def score(x, t):
        return -x / append_dims(sde.marginal_prob(x, t)[1], x.ndim) ** 2

    per_sample = dsm_loss(score, sde, x0, t=t, z=z, reduce=False)
    std = torch.sqrt(torch.as_tensor(truth("ve", t.double().numpy())[1]))[:, None, None, None]
    x_t = x0.double() + std * z.double()
    # |s std + z|^2 with s = -x / std^2
    expected = (-x_t / std + z.double()).pow(2).reshape(3, -1).sum(1)
    assert per_sample.dtype == torch.float32 and per_sample.shape == (3,)
    assert_close(per_sample.double(), expected, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------------------------------------
# Importance-sampled t for the likelihood weighting
# ------------------------------------------------------------------------------------------------
# For data N(mu, s0^2 I) in D dimensions with the exact score, the per-sample loss given t has mean
# D m^2 s0^2 / (m^2 s0^2 + v) = D s0^2 / (s0^2 + sigma~^2) (module docstring), and with
# g^2 / v = d/dt ln sigma~^2 the likelihood-weighted loss averaged over t ~ U(eps, 1) is
#   1 / (1 - eps) int D s0^2 / (s0^2 + e^u) du over u = ln sigma~^2 in [u(eps), u(1)]
#   = D / (1 - eps) [u - ln(s0^2 + e^u)] between the ends, in closed form.
IS_MU, IS_S0, IS_DIM = 0.5, 0.3, 4


def _gaussian_score(sde):
    def score(x, t):
        m, v = append_dims(sde.mean_coeff(t), x.ndim), append_dims(sde.marginal_std(t) ** 2, x.ndim)
        return -(x - m * IS_MU) / (m ** 2 * IS_S0 ** 2 + v)
    return score


def _likelihood_loss_closed_form(name):
    m, v, _ = truth(name, np.array([EPS, 1.0]))
    u = np.log(v / m ** 2)
    antiderivative = u - np.log(IS_S0 ** 2 + np.exp(u))
    return IS_DIM * (antiderivative[1] - antiderivative[0]) / (1 - EPS)


def _importance_sampled_estimate(name, uniform_t=False, n=20_000):
    """(mean, standard error) of the importance-weighted likelihood loss on the Gaussian data,
    t from the importance density, or (the negative control) from U(eps, 1)."""
    sde = _sdes()[name]
    gen = torch.Generator().manual_seed(0)
    x0 = IS_MU + IS_S0 * torch.randn(n, IS_DIM, generator=gen, dtype=F64)
    t = torch.rand(n, generator=gen, dtype=F64) * (1 - EPS) + EPS if uniform_t else None
    losses = dsm_loss(_gaussian_score(sde), sde, x0, eps=EPS, weighting="likelihood",
                      importance_sampling=True, t=t, generator=gen, reduce=False)
    return losses.mean().item(), losses.std().item() / math.sqrt(n)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_importance_sampled_likelihood_loss_matches_its_closed_form(name):
    mean, se = _importance_sampled_estimate(name)
    assert abs(mean - _likelihood_loss_closed_form(name)) < K_SE * se, (mean, se)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_a_wrong_time_density_fails_the_same_check(name):
    """Negative control: uniform t with the importance weight Z / (1 - eps) is the wrong density."""
    mean, se = _importance_sampled_estimate(name, uniform_t=True)
    assert abs(mean - _likelihood_loss_closed_form(name)) > K_SE * se, (mean, se)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_importance_sampled_times_follow_their_cdf(name):
    """F(t) = ln(sigma~^2(t) / sigma~^2(eps)) / Z; Kolmogorov–Smirnov at the 0.1 % level
    (critical value 1.95 / sqrt(n)); uniform t (the negative control) is far outside it."""
    from sdelib.losses import sample_time

    sde = _sdes()[name]
    n = 20_000
    m, v, _ = truth(name, np.array([EPS, 1.0]))
    low, high = np.log(v / m ** 2)

    def cdf(t):
        m_t, v_t, _ = truth(name, t)
        return (np.log(v_t / m_t ** 2) - low) / (high - low)

    gen = torch.Generator().manual_seed(1)
    t = sample_time(sde, n, eps=EPS, importance_sampling=True, generator=gen, dtype=F64).numpy()
    critical = 1.95 / math.sqrt(n)
    assert t.min() >= EPS and t.max() <= 1.0
    assert stats.kstest(t, cdf).statistic < critical
    uniform = sample_time(sde, n, eps=EPS, generator=gen, dtype=F64).numpy()
    assert stats.kstest(uniform, cdf).statistic > 10 * critical


def test_importance_sampling_is_only_for_the_likelihood_weighting():
    sde = VESDE(25.0)
    with pytest.raises(ValueError, match="likelihood"):
        dsm_loss(_gaussian_score(sde), sde, torch.zeros(4, 2), importance_sampling=True)

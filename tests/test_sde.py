"""Tests of sdelib.sde: each closed form against the process definition (ODEs, Monte Carlo, the
paper's formulas), the reverse SDE / probability-flow ODE, the discretisations and bad input.

Truth used below (Song et al. 2021, eqs. (9)-(12), (30)-(33)), written here from the
paper and not read from sdelib:
  VE(sigma):         A = 0,       g = sigma^t,                    v = (sigma^(2t) - 1) / (2 ln sigma)
  GeometricVE(a, b): A = 0,       g = s(t) sqrt(2 ln(b / a)),     v = s(t)^2 - a^2, s = a (b/a)^t
  VP(bmin, bmax):    A = -beta/2, g = sqrt(beta),                 v = 1 - exp(-B)
  subVP(bmin, bmax): A = -beta/2, g = sqrt(beta (1 - exp(-2 B))), v = (1 - exp(-B))^2
with beta(t) = bmin + t (bmax - bmin), B(t) = bmin t + t^2 (bmax - bmin) / 2, m(t) = exp(int_0^t A).
"""
import functools
import json
import math

import numpy as np
import pytest
import torch
from helpers import assert_close
from scipy import stats
from scipy.integrate import solve_ivp

from sdelib.sde import (GeometricVESDE, SubVPSDE, VESDE, VPSDE, append_dims, make_sde,
                        sde_from_config)

F64 = torch.float64




def _sdes():
    return {"ve": VESDE(25.0), "ve-geometric": GeometricVESDE(0.01, 50.0),
            "vp": VPSDE(0.1, 20.0), "subvp": SubVPSDE(0.1, 20.0)}


SDE_NAMES = list(_sdes())


def truth(name: str, t):
    """(A(t), g(t), m(t), v(t)) from the paper's definitions, in numpy float64."""
    t = np.asarray(t, dtype=np.float64)
    if name == "ve":
        sigma = 25.0
        return (np.zeros_like(t), sigma ** t, np.ones_like(t),
                (sigma ** (2 * t) - 1) / (2 * np.log(sigma)))
    if name == "ve-geometric":
        s_min, s_max = 0.01, 50.0
        s = s_min * (s_max / s_min) ** t
        return (np.zeros_like(t), s * np.sqrt(2 * np.log(s_max / s_min)), np.ones_like(t),
                s ** 2 - s_min ** 2)
    beta_min, beta_max = 0.1, 20.0
    beta = beta_min + t * (beta_max - beta_min)
    B = beta_min * t + 0.5 * t ** 2 * (beta_max - beta_min)
    if name == "vp":
        return -0.5 * beta, np.sqrt(beta), np.exp(-0.5 * B), 1 - np.exp(-B)
    if name == "subvp":
        return (-0.5 * beta, np.sqrt(beta * (1 - np.exp(-2 * B))), np.exp(-0.5 * B),
                (1 - np.exp(-B)) ** 2)
    raise KeyError(name)


def _tensor(values):
    return torch.as_tensor(np.asarray(values, dtype=np.float64), dtype=F64)


ODE_GRID = np.concatenate([[1e-3, 5e-3], np.linspace(0.02, 1.0, 50)])


# ------------------------------------------------------------------------------------------------
# The process itself
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
def test_drift_and_diffusion_match_the_papers_definitions(name):
    sde = _sdes()[name]
    t = np.linspace(0.0, 1.0, 41)
    A, g, _, _ = truth(name, t)
    x = torch.randn(t.size, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    # Closed forms against closed forms: only float64 rounding separates them.
    assert_close(sde.drift(x, _tensor(t)), _tensor(A)[:, None] * x,
                               rtol=1e-12, atol=1e-12)
    assert_close(sde.diffusion(_tensor(t)), _tensor(g), rtol=1e-12, atol=1e-12)


@functools.lru_cache(maxsize=None)
def _moment_ode_solution(name):
    """m(t), v(t) on ODE_GRID: m' = A m, v' = 2 A v + g^2 from m(0) = 1, v(0) = 0, with A and g read
    ONLY from the SDE's `drift` (A(t) = f(1, t)) and `diffusion`, so the closed forms are checked
    against the process definition."""
    sde = _sdes()[name]

    def rhs(t, y):
        tt = torch.tensor([t], dtype=F64)
        A = sde.drift(torch.ones(1, 1, dtype=F64), tt).item()
        g = sde.diffusion(tt).item()
        return [A * y[0], 2 * A * y[1] + g * g]

    sol = solve_ivp(rhs, (0.0, 1.0), [1.0, 0.0], method="DOP853", t_eval=ODE_GRID,
                    rtol=1e-12, atol=1e-16)
    assert sol.success, sol.message
    return sol.y[0], sol.y[1]


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_prob_solves_the_mean_and_variance_odes(name):
    sde = _sdes()[name]
    m_ode, v_ode = _moment_ode_solution(name)
    mean, std = sde.marginal_prob(torch.ones(ODE_GRID.size, 1, dtype=F64), _tensor(ODE_GRID))
    # The ODE solver is run at rtol 1e-12, so 1e-8 relative leaves four orders of magnitude for
    # the solver while still catching any wrong closed form (see the control test below).
    np.testing.assert_allclose(mean[:, 0].numpy(), m_ode, rtol=1e-8, atol=0)
    np.testing.assert_allclose(std.numpy() ** 2, v_ode, rtol=1e-8, atol=1e-18)


@pytest.mark.parametrize("name, wrong_variance", [
    # the paper's approximation v = s(t)^2 (drops s(0)^2): wrong at small t
    ("ve-geometric", lambda t: (0.01 * 5000.0 ** t) ** 2),
    # the VP variance for sub-VP
    ("subvp", lambda t: truth("vp", t)[3]),
    # VE without the "- 1" (variance not 0 at t = 0)
    ("ve", lambda t: 25.0 ** (2 * t) / (2 * np.log(25.0))),
])
def test_moment_ode_check_rejects_wrong_closed_forms(name, wrong_variance):
    """Negative control for the ODE test: the same tolerance rejects common wrong variances."""
    _, v_ode = _moment_ode_solution(name)
    assert not np.allclose(wrong_variance(ODE_GRID), v_ode, rtol=1e-8, atol=1e-18)
    # ... while the true closed form of the test's own truth table passes it.
    np.testing.assert_allclose(truth(name, ODE_GRID)[3], v_ode, rtol=1e-8, atol=1e-18)


# ------------------------------------------------------------------------------------------------
# Monte Carlo of the forward SDE (Euler–Maruyama)
# ------------------------------------------------------------------------------------------------
MC_PATHS = 10_000
MC_STEPS = 4_000
MC_TIMES = (0.1, 0.3, 1.0)   # on the EM grid: steps 400, 1200, 4000
MC_X0 = 1.5
K_SE = 4.0   # 4 standard errors: P(|N(0,1)| > 4) = 6e-5 per check, 24 checks in all -> < 2e-3


def _simulate_em(sde, generator):
    """X_{i+1} = X_i + f(X_i, t_i) dt + g(t_i) sqrt(dt) z_i from X_0 = MC_X0, using only the SDE's
    drift and diffusion. Returns {t: samples (MC_PATHS,)} at MC_TIMES."""
    dt = 1.0 / MC_STEPS
    record = {round(t * MC_STEPS): t for t in MC_TIMES}
    t_grid = torch.arange(MC_STEPS, dtype=F64) * dt
    noise_scale = sde.diffusion(t_grid) * math.sqrt(dt)      # g(t_i) sqrt(dt), one call for the grid
    x = torch.full((MC_PATHS, 1), MC_X0, dtype=F64)
    out, chunk = {}, 500
    for i in range(MC_STEPS):
        if i % chunk == 0:   # noise drawn in blocks, in float32 (x stays float64)
            z = torch.randn(chunk, MC_PATHS, 1, generator=generator)
        x = x + sde.drift(x, t_grid[i:i + 1]) * dt + noise_scale[i] * z[i % chunk]
        if i + 1 in record:
            out[record[i + 1]] = x[:, 0].clone()
    return out


def _em_exact_moments(name):
    """Mean and variance of the EM chain itself, exactly: m_{i+1} = (1 + A_i dt) m_i,
    v_{i+1} = (1 + A_i dt)^2 v_i + g_i^2 dt. Their distance to the truth is the EM bias."""
    dt = 1.0 / MC_STEPS
    A, g, _, _ = truth(name, np.arange(MC_STEPS) * dt)
    m, v, out = MC_X0, 0.0, {}
    record = {round(t * MC_STEPS): t for t in MC_TIMES}
    for i in range(MC_STEPS):
        m, v = (1 + A[i] * dt) * m, (1 + A[i] * dt) ** 2 * v + g[i] ** 2 * dt
        if i + 1 in record:
            out[record[i + 1]] = (m, v)
    return out


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_prob_matches_monte_carlo_of_the_forward_sde(name):
    sde = _sdes()[name]
    paths = _simulate_em(sde, torch.Generator().manual_seed(1234))
    em_moments = _em_exact_moments(name)
    n = MC_PATHS
    for t, x in paths.items():
        mean, std = sde.marginal_prob(torch.full((1, 1), MC_X0, dtype=F64),
                                      torch.tensor([t], dtype=F64))
        mean, v = mean.item(), std.item() ** 2
        se_mean = math.sqrt(v / n)                    # SE of a sample mean of N(., v)
        se_var = v * math.sqrt(2.0 / (n - 1))         # SE of a Gaussian sample variance
        # The EM bias (computed exactly from the chain's moment recursion) must be negligible next
        # to the SE: 4000 steps keep it below 0.35 SE at these times (largest: sub-VP's variance
        # at t = 0.1, where g(0) = 0 makes the left-point rule lag), so k = 4 stays honest.
        em_mean, em_var = em_moments[t]
        assert abs(em_mean - mean) < 0.35 * se_mean, (t, em_mean, mean)
        assert abs(em_var - v) < 0.35 * se_var, (t, em_var, v)

        sample_mean, sample_var = x.mean().item(), x.var(unbiased=True).item()
        assert abs(sample_mean - mean) < K_SE * se_mean, (t, sample_mean, mean, se_mean)
        assert abs(sample_var - v) < K_SE * se_var, (t, sample_var, v, se_var)

        # Negative controls: the same checks reject a variance 10 % too large (0.1 / (1.1 sqrt(2/n))
        # = 6.4 SE away at this n) and a mean 5 % too small at t = 0.1 (>= 20 SE away here).
        assert abs(sample_var - 1.1 * v) > K_SE * v * 1.1 * math.sqrt(2.0 / (n - 1))
        if t == 0.1:
            assert abs(sample_mean - 0.95 * mean) > K_SE * se_mean
        if name == "ve-geometric" and t == 0.1:
            # the paper's v = s(t)^2, 22 % too large at t = 0.1: rejected
            paper_v = sde.sigma(torch.tensor(t)).item() ** 2
            assert abs(sample_var - paper_v) > K_SE * paper_v * math.sqrt(2.0 / (n - 1))


@pytest.mark.parametrize("name", SDE_NAMES)
def test_perturb_draws_have_the_papers_kernel_moments(name):
    """sde.perturb(x0, t, z) with z ~ N(0, I): mean m(t) x0 and variance v(t) of the paper's
    formulas (`truth`), within K_SE standard errors of 20,000 draws per time; the same check
    rejects a variance 10 % too large."""
    sde, n, x0 = _sdes()[name], 20_000, 1.5
    generator = torch.Generator().manual_seed(7)
    for t in (0.05, 0.5, 1.0):
        z = torch.randn(n, 1, generator=generator, dtype=F64)
        x_t = sde.perturb(torch.full((n, 1), x0, dtype=F64), torch.full((n,), t, dtype=F64), z)
        _, _, m, v = (float(a) for a in truth(name, t))
        sample_mean, sample_var = x_t.mean().item(), x_t.var().item()
        assert abs(sample_mean - m * x0) < K_SE * math.sqrt(v / n), (t, sample_mean, m * x0)
        assert abs(sample_var - v) < K_SE * v * math.sqrt(2.0 / (n - 1)), (t, sample_var, v)
        assert abs(sample_var - 1.1 * v) > K_SE * 1.1 * v * math.sqrt(2.0 / (n - 1))


def test_perturb_rejects_noise_of_another_shape():
    with pytest.raises(ValueError, match="z has shape"):
        VESDE(25.0).perturb(torch.zeros(4, 2), torch.full((4,), 0.5), torch.zeros(4, 3))


# ------------------------------------------------------------------------------------------------
# Shapes and properties of the kernels
# ------------------------------------------------------------------------------------------------
def test_subvp_variance_never_exceeds_vp():
    vp, subvp = VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)
    t = torch.linspace(1e-5, 1.0, 100_001, dtype=F64)
    v_vp = vp.marginal_prob(torch.zeros(t.numel(), 1, dtype=F64), t)[1] ** 2
    v_subvp = subvp.marginal_prob(torch.zeros(t.numel(), 1, dtype=F64), t)[1] ** 2
    assert bool((v_subvp <= v_vp).all())
    # strictly below for t > 0, since (1 - e^-B)^2 < 1 - e^-B when 0 < 1 - e^-B < 1
    assert bool((v_subvp < v_vp).all())
    # same mean coefficient: they differ in the diffusion only
    assert torch.equal(vp.mean_coeff(t), subvp.mean_coeff(t))


@pytest.mark.parametrize("name", ["ve", "ve-geometric"])
def test_ve_mean_is_the_data_unchanged(name):
    sde = _sdes()[name]
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(16, 1, 28, 28, generator=gen, dtype=F64)
    t = torch.rand(16, generator=gen, dtype=F64) * 0.999 + 1e-3
    mean, _ = sde.marginal_prob(x0, t)
    assert torch.equal(mean, x0)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_marginal_prob_is_dimension_agnostic(name):
    sde = _sdes()[name]
    gen = torch.Generator().manual_seed(3)
    B = 6
    t = torch.rand(B, generator=gen, dtype=F64) * 0.99 + 0.01
    points = torch.randn(B, 2, generator=gen, dtype=F64)
    images = torch.randn(B, 1, 28, 28, generator=gen, dtype=F64)
    images[:, 0, 0, :2] = points

    mean_p, std_p = sde.marginal_prob(points, t)
    mean_i, std_i = sde.marginal_prob(images, t)
    _, _, m, v = truth(name, t.numpy())
    assert mean_p.shape == points.shape and mean_i.shape == images.shape
    assert std_p.shape == (B,) and std_i.shape == (B,)
    assert torch.equal(std_p, std_i)
    assert torch.equal(mean_i[:, 0, 0, :2], mean_p)     # same per-element result in both layouts
    assert_close(mean_i, _tensor(m)[:, None, None, None] * images, rtol=1e-12, atol=0)
    assert_close(std_i, _tensor(np.sqrt(v)), rtol=1e-12, atol=0)
    # sample b alone (t of shape (1,)) gives row b of the batched result
    for b in range(B):
        mean_b, std_b = sde.marginal_prob(images[b:b + 1], t[b:b + 1])
        assert_close(mean_b[0], mean_i[b], rtol=1e-14, atol=0)
        assert_close(std_b[0], std_i[b], rtol=1e-14, atol=0)
    # float32 in, float32 out
    mean32, std32 = sde.marginal_prob(images.float(), t.float())
    assert mean32.dtype == torch.float32 and std32.dtype == torch.float32


def test_marginal_prob_accepts_a_python_float_time():
    sde = VPSDE(0.1, 20.0)
    x0 = torch.ones(3, 2, dtype=F64)
    mean, std = sde.marginal_prob(x0, 0.5)
    _, _, m, v = truth("vp", 0.5)
    assert_close(mean, torch.full_like(x0, float(m)), rtol=1e-12, atol=0)
    assert abs(float(std) - math.sqrt(v)) < 1e-12


# ------------------------------------------------------------------------------------------------
# Prior
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
def test_prior_std_is_the_marginal_std_at_T(name):
    sde = _sdes()[name]
    v1 = truth(name, 1.0)[3]
    if name.startswith("ve"):
        assert sde.prior_std == pytest.approx(math.sqrt(v1), rel=1e-12)
    else:
        # VP-type priors are N(0, I): v(1) = 1 - e^-10.05 (VP) or its square (sub-VP) is within 1e-4
        assert sde.prior_std == 1.0
        assert abs(math.sqrt(v1) - 1.0) < 1e-4


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(5, 2), (3, 1, 28, 28)])
def test_prior_logp_is_the_gaussian_log_density(name, shape):
    sde = _sdes()[name]
    z = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=F64) * sde.prior_std
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=F64),
                                        torch.tensor(sde.prior_std, dtype=F64))
    expected_torch = normal.log_prob(z).reshape(shape[0], -1).sum(1)
    expected_scipy = stats.norm(0.0, sde.prior_std).logpdf(z.numpy()).reshape(shape[0], -1).sum(1)
    logp = sde.prior_logp(z)
    assert logp.shape == (shape[0],)
    assert_close(logp, expected_torch, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(logp.numpy(), expected_scipy, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("name", SDE_NAMES)
def test_prior_sampling_has_mean_zero_and_the_prior_std(name):
    sde = _sdes()[name]
    x = sde.prior_sampling((4000, 50), generator=torch.Generator().manual_seed(5))
    assert x.shape == (4000, 50) and x.dtype == torch.float32
    assert sde.prior_sampling((2, 3), generator=torch.Generator().manual_seed(5),
                              dtype=F64).dtype == F64
    n = x.numel()
    sigma = sde.prior_std
    x = x.double()
    # k = 4 SE: SE of the mean sigma / sqrt(n), of the sample std sigma / sqrt(2 (n - 1)).
    se_std = sigma / math.sqrt(2 * (n - 1))
    assert abs(x.mean().item()) < K_SE * sigma / math.sqrt(n)
    assert abs(x.std().item() - sigma) < K_SE * se_std
    # negative control: a std 2 % off (~13 SE at n = 2e5) is rejected by the same check
    assert abs(x.std().item() - 1.02 * sigma) > K_SE * se_std
    # seeded: the same generator seed gives the same draw
    again = sde.prior_sampling((4000, 50), generator=torch.Generator().manual_seed(5))
    assert torch.equal(again.double(), x)


# ------------------------------------------------------------------------------------------------
# Reverse-time SDE and probability-flow ODE
# ------------------------------------------------------------------------------------------------
def _some_score(x, t):
    """Any smooth function of (x, t) will do: the reverse drift is linear in the score."""
    return torch.sin(x) * append_dims(1 + t, x.ndim) - 0.3 * x


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("shape", [(7, 2), (3, 1, 28, 28)])
def test_reverse_sde_and_probability_flow_drifts(name, shape):
    sde = _sdes()[name]
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(shape, generator=gen, dtype=F64)
    t = torch.rand(shape[0], generator=gen, dtype=F64) * 0.99 + 0.01
    A, g, _, _ = truth(name, t.numpy())
    A, g = (append_dims(_tensor(a), x.ndim) for a in (A, g))
    f, s = A * x, _some_score(x, t)

    rev = sde.reverse(_some_score)
    ode = sde.reverse(_some_score, probability_flow=True)
    # eq. (6): f - g^2 s;  eq. (13): f - g^2 s / 2
    assert_close(rev.drift(x, t), f - g ** 2 * s, rtol=1e-12, atol=1e-10)
    assert_close(ode.drift(x, t), f - 0.5 * g ** 2 * s, rtol=1e-12, atol=1e-10)
    assert_close(rev.diffusion(t), g.reshape(-1), rtol=1e-12, atol=0)
    assert torch.equal(ode.diffusion(t), torch.zeros(shape[0], dtype=F64))


# ------------------------------------------------------------------------------------------------
# Discretisations (paper eqs. (8), (10) and (45))
# ------------------------------------------------------------------------------------------------
def test_vp_discretize_is_the_ddpm_step():
    sde = VPSDE(0.1, 20.0)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 1, 4, 4, generator=gen, dtype=F64)
    t = torch.rand(8, generator=gen, dtype=F64) * 0.99 + 0.01
    dt = 1e-3
    beta_i = (0.1 + t * (20.0 - 0.1)) * dt               # DDPM beta_i = beta(t_i) dt
    f, G = sde.discretize(x, t, dt)
    # x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z
    assert_close(x + f, torch.sqrt(1 - beta_i)[:, None, None, None] * x,
                               rtol=1e-12, atol=1e-14)
    assert_close(G, torch.sqrt(beta_i), rtol=1e-12, atol=0)
    assert_close(sde.langevin_alpha(t, dt), 1 - beta_i, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["ve", "ve-geometric"])
def test_ve_discretize_increments_add_up_to_the_marginal_variance(name):
    sde = _sdes()[name]
    eps, N = 1e-3, 1000
    dt = (1.0 - eps) / N
    t = torch.linspace(eps, 1.0, N + 1, dtype=F64)[1:]      # t_1 .. t_N, t_0 = eps
    x = torch.zeros(N, 3, dtype=F64)
    f, G = sde.discretize(x, t, dt)
    assert torch.equal(f, torch.zeros_like(x))             # SMLD: no drift
    v = lambda s: truth(name, s)[3]                         # noqa: E731
    # sigma_i^2 - sigma_{i-1}^2 telescopes to v(1) - v(eps)
    assert (G ** 2).sum().item() == pytest.approx(v(1.0) - v(eps), rel=1e-10)
    assert_close(G ** 2, _tensor(v(t.numpy()) - v(t.numpy() - dt)),
                               rtol=1e-9, atol=1e-15)
    # and each increment is g(t)^2 dt to first order: for g^2 = c e^(2 a t) (a = ln sigma, or
    # ln(s_max/s_min)), G^2 / (g^2 dt) = (1 - e^(-2 a dt)) / (2 a dt), within [1 - a dt, 1].
    a = math.log(25.0) if name == "ve" else math.log(50.0 / 0.01)
    ratio = (G ** 2 / (sde.diffusion(t) ** 2 * dt)).numpy()
    assert ((ratio <= 1 + 1e-9) & (ratio >= 1 - a * dt)).all()
    assert torch.equal(sde.langevin_alpha(t, dt), torch.ones_like(t))


def test_subvp_discretize_is_euler_maruyama():
    sde = SubVPSDE(0.1, 20.0)
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(5, 2, generator=gen, dtype=F64)
    t = torch.rand(5, generator=gen, dtype=F64) * 0.99 + 0.01
    dt = 2e-3
    A, g, _, _ = truth("subvp", t.numpy())
    f, G = sde.discretize(x, t, dt)
    assert_close(f, _tensor(A)[:, None] * x * dt, rtol=1e-12, atol=1e-15)
    assert_close(G, _tensor(g) * math.sqrt(dt), rtol=1e-12, atol=0)
    # the corrector's alpha_i = 1 - beta_i of the discretised chain, as for VP (paper Alg. 5)
    beta_i = (0.1 + t * (20.0 - 0.1)) * dt
    assert_close(sde.langevin_alpha(t, dt), 1 - beta_i, rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------------------
# Bad input and configuration
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("bad_t", [0.0, -0.2, 1.5])
def test_time_outside_zero_one_is_rejected(name, bad_t):
    sde = _sdes()[name]
    x0 = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"\(0,"):
        sde.marginal_prob(x0, torch.tensor([0.5, bad_t, 0.5]))
    with pytest.raises(ValueError, match=r"\(0,"):
        sde.marginal_prob(x0, bad_t)


@pytest.mark.parametrize("name", SDE_NAMES)
@pytest.mark.parametrize("t_shape", [(4,), (3, 1), (2,)])
def test_time_of_the_wrong_shape_is_rejected(name, t_shape):
    sde = _sdes()[name]
    x0 = torch.zeros(3, 2)
    t = torch.full(t_shape, 0.5)
    with pytest.raises(ValueError, match="shape"):
        sde.marginal_prob(x0, t)
    with pytest.raises(ValueError, match="shape"):
        sde.drift(x0, t)


def test_make_sde_rejects_an_unknown_name_and_lists_the_choices():
    with pytest.raises(ValueError) as info:
        make_sde("vesde")
    message = str(info.value)
    assert "vesde" in message
    for choice in ("ve", "ve-geometric", "vp", "subvp"):
        assert repr(choice) in message


@pytest.mark.parametrize("build", [
    lambda: VESDE(1.0), lambda: VESDE(0.5), lambda: VESDE(-3.0),
    lambda: GeometricVESDE(0.0, 50.0), lambda: GeometricVESDE(50.0, 0.01),
    lambda: GeometricVESDE(1.0, 1.0),
    lambda: VPSDE(20.0, 0.1), lambda: VPSDE(1.0, 1.0), lambda: VPSDE(-0.1, 20.0),
    lambda: SubVPSDE(20.0, 0.1), lambda: SubVPSDE(5.0, 5.0),
    lambda: make_sde("vp", beta_min=3.0, beta_max=2.0),
])
def test_invalid_parameters_are_rejected(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize("sde", [VESDE(7.5), GeometricVESDE(0.02, 30.0), VPSDE(0.2, 15.0),
                                 SubVPSDE(0.05, 12.0)], ids=lambda s: s.name)
def test_config_round_trip_rebuilds_the_same_sde(sde):
    config = sde.config()
    stored = json.loads(json.dumps(config))              # checkpoints store it as JSON
    rebuilt = sde_from_config(stored)
    assert stored == config                               # sde_from_config does not consume it
    assert type(rebuilt) is type(sde) and rebuilt.config() == config
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=F64)
    for a, b in zip(sde.marginal_prob(x0, t), rebuilt.marginal_prob(x0, t)):
        assert torch.equal(a, b)
    assert torch.equal(sde.diffusion(t), rebuilt.diffusion(t))
    params = {k: v for k, v in config.items() if k != "name"}
    assert make_sde(config["name"], **params).config() == config


def test_append_dims_broadcasts_and_rejects_too_many_dims():
    t = torch.arange(3.0)
    assert append_dims(t, 4).shape == (3, 1, 1, 1)
    with pytest.raises(ValueError):
        append_dims(torch.zeros(2, 2), 1)


# ------------------------------------------------------------------------------------------------
# Noise levels sigma~(t) = std(t) / m(t) and their closed-form inverse
# ------------------------------------------------------------------------------------------------
NOISE_LEVEL_SDES = [VESDE(25.0), GeometricVESDE(0.01, 50.0), VPSDE(0.1, 20.0), SubVPSDE(0.1, 20.0)]


def _bisection(sde, sigma, iterations=60):
    """The t in [0, 1] with sigma~(t) = sigma by halving: 2^-60 is below float64 resolution."""
    low, high = torch.zeros_like(sigma), torch.ones_like(sigma)
    for _ in range(iterations):
        mid = (low + high) / 2
        above = sde.marginal_std(mid) / sde.mean_coeff(mid) > sigma
        high, low = torch.where(above, mid, high), torch.where(above, low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("sde", NOISE_LEVEL_SDES, ids=lambda s: s.name)
def test_scaled_std_is_std_over_mean_coefficient(sde):
    t = torch.cat([torch.logspace(-6, -1, 30, dtype=F64), torch.linspace(0.1, 1.0, 30, dtype=F64)])
    mean, std = sde.marginal_prob(torch.ones(len(t), 1, dtype=F64), t)
    # float64 round-off: a few ulps of each factor (expm1 / sinh forms vs sqrt(v) / m)
    assert_close(sde.scaled_std(t), std / mean[:, 0], rtol=1e-13)


@pytest.mark.parametrize("sde", NOISE_LEVEL_SDES, ids=lambda s: s.name)
def test_time_of_scaled_std_inverts_scaled_std_in_closed_form(sde):
    t = torch.cat([torch.logspace(-6, -1, 30, dtype=F64), torch.linspace(0.1, 1.0, 30, dtype=F64)])
    sigma = sde.scaled_std(t)
    # Closed form: exact to float64 round-off in t (|t| <= 1, a few ulps: 1e-15 absolute).
    assert_close(sde.time_of_scaled_std(sigma), t, rtol=1e-12, atol=1e-15)
    # An independent route to the same times: bisection on std / m, 60 halvings.
    assert_close(sde.time_of_scaled_std(sigma), _bisection(sde, sigma), rtol=0, atol=1e-15)


def test_another_sdes_inverse_misses_the_times():
    """Negative control: the check above separates the four closed forms."""
    t = torch.linspace(0.01, 1.0, 50, dtype=F64)
    for sde in NOISE_LEVEL_SDES:
        for other in NOISE_LEVEL_SDES:
            if other is not sde:
                error = (other.time_of_scaled_std(sde.scaled_std(t)) - t).abs().max().item()
                assert error > 1e-3, (sde.name, other.name, error)

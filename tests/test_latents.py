"""sdelib.latents: DDIM is Euler in (y, sigma~); encode/decode invert each other; slerp.

Tolerances.
- DDIM vs `edm_stochastic(order=1, churn=0)`: the same update written in two algebraic forms
  (module docstring of sdelib.latents), float64, exact score. Each step differs by a few unit
  round-offs (u = 1.1e-16) of |x| <= ~10; over 25 steps (the map is a contraction-or-mild-expansion,
  |dy'/dy| = O(1)) that is ~1e-13. We assert 1e-10 relative to max |x|: 1000x margin, still
  nine orders of magnitude below the difference of a genuinely different scheme (the negative
  control, Euler in t on the same grid, differs by > 1e-3).
- encode: for one Gaussian N(mu, c^2 I) the probability-flow map is affine in closed form,
  (x_t - m_t mu) / s_t constant with s_t^2 = m_t^2 c^2 + v_t, so z is known exactly. RK45 at
  rtol = atol = 1e-9 keeps the global error within ~100 x the tolerance on this smooth problem:
  we assert 1e-6 (measured ~1e-8).
- decode(encode(x)) on a 2-D mixture at rtol = atol = 1e-8: measured ~6e-8; asserted 1e-5.
  Negative control: decoding with the score scaled by 0.9 misses by > 1e-2.
- slerp: norms and end points to 1e-12 (a few round-offs of O(1) numbers).
"""
import math

import pytest
import torch

from sdelib.data import GaussianMixture, gaussian
from sdelib.latents import LatentResult, ddim, decode, encode, lerp, slerp
from sdelib.samplers import edm_stochastic, heun_time_grid
from sdelib.sde import SubVPSDE, VESDE, VPSDE

MIXTURE = GaussianMixture(means=[[-2.5, -1.0], [2.5, 1.5]], covs=[[0.5, 0.3], [0.4, 0.6]],
                          weights=[0.3, 0.7])
SDES = [VPSDE(), VESDE(25.0), SubVPSDE()]


@pytest.mark.parametrize("sde", SDES, ids=lambda s: s.name)
def test_ddim_is_euler_in_scaled_variables(sde):
    x1 = MIXTURE.perturbed(sde, 1.0).sample(400, torch.Generator().manual_seed(0))
    score = MIXTURE.score_fn(sde)
    by_ddim = ddim(score, sde, x1, steps=25)
    by_euler = edm_stochastic(score, sde, x1.shape, steps=25, order=1, churn=0.0, x_init=x1)
    assert by_ddim.nfe == by_euler.nfe == 25
    scale = by_euler.samples.abs().max()
    assert (by_ddim.samples - by_euler.samples).abs().max() / scale < 1e-10

    # Negative control: Euler in t (not in sigma~) on the same grid is another scheme.
    times = heun_time_grid(sde, 25)
    drift = sde.reverse(score, probability_flow=True).drift
    x = x1
    for i in range(25):
        t_vec = times[i].expand(x.shape[0])
        x = x + drift(x, t_vec) * (times[i + 1] - times[i])
    assert (x - by_euler.samples).abs().max() / scale > 1e-3


def test_ddim_matches_its_closed_form_on_one_gaussian():
    """For data N(0, c^2), p_t = N(0, s^2) with s^2 = m^2 c^2 + std^2, so the exact
    eps_hat = -std s(x) = std x / s^2 and x0_hat = m c^2 x / s^2 (Tweedie): one DDIM step is
    x' = m' x0_hat + std' eps_hat in closed form."""
    sde, c2 = VPSDE(), 0.25
    data = gaussian([0.0], [[c2]])
    times = torch.tensor([1.0, 0.4], dtype=torch.float64)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    m, std = sde.mean_coeff(times), sde.marginal_std(times)
    s2 = m[0] ** 2 * c2 + std[0] ** 2
    expected = m[1] * (m[0] * c2 * x / s2) + std[1] * (std[0] * x / s2)
    got = ddim(data.score_fn(sde), sde, x, times).samples
    assert (got - expected).abs().max() < 1e-13


@pytest.mark.parametrize("sde", SDES[:2], ids=lambda s: s.name)
def test_encode_is_the_closed_form_map_of_a_gaussian(sde):
    mu, c2, eps = 1.5, 0.3, 1e-3
    data = gaussian([mu, -mu], [[c2, 0.0], [0.0, c2]])
    x = data.perturbed(sde, eps).sample(64, torch.Generator().manual_seed(1))
    result = encode(data.score_fn(sde), sde, x, eps=eps, rtol=1e-9, atol=1e-9)
    assert isinstance(result, LatentResult) and result.nfe > 0
    t = torch.tensor([eps, 1.0], dtype=torch.float64)
    m, v = sde.mean_coeff(t), sde.marginal_std(t) ** 2
    s = torch.sqrt(m ** 2 * c2 + v)
    centre = torch.tensor([mu, -mu], dtype=torch.float64)
    expected = m[1] * centre + s[1] / s[0] * (x - m[0] * centre)
    assert (result.z - expected).abs().max() < 1e-6


@pytest.mark.parametrize("sde", SDES[:2], ids=lambda s: s.name)
def test_decode_inverts_encode(sde):
    x = MIXTURE.sample(50, torch.Generator().manual_seed(2))
    tol = dict(rtol=1e-8, atol=1e-8)
    z = encode(MIXTURE.score_fn(sde), sde, x, **tol).z
    back = decode(MIXTURE.score_fn(sde), sde, z, **tol).samples
    assert (back - x).abs().max() < 1e-5
    wrong = decode(MIXTURE.score_fn(sde, scale=0.9), sde, z, **tol).samples
    assert (wrong - x).abs().max() > 1e-2                      # negative control


def test_slerp_keeps_the_norm_and_the_end_points():
    z0 = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    z1 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)   # orthogonal
    for w in (0.1, 0.25, 0.5, 0.9):
        norms = slerp(z0, z1, w).norm(dim=1)
        assert (norms - torch.tensor([3.0, 2.0], dtype=torch.float64)).abs().max() < 1e-12
        # closed form on the quarter circle: cos(w pi/2) z0 + sin(w pi/2) z1
        expected = math.cos(w * math.pi / 2) * z0 + math.sin(w * math.pi / 2) * z1
        assert (slerp(z0, z1, w) - expected).abs().max() < 1e-12
    assert torch.equal(slerp(z0, z1, 0.0), z0) and torch.equal(slerp(z0, z1, 1), z1)
    # Negative control: linear interpolation leaves the sphere (midpoint norm / sqrt(2)).
    ratio = lerp(z0, z1, 0.5).norm(dim=1) / torch.tensor([3.0, 2.0], dtype=torch.float64)
    assert (ratio - 2 ** -0.5).abs().max() < 1e-12
    # Parallel codes: the linear limit, no NaN.
    same = slerp(z0, 2 * z0, 0.5)
    assert torch.isfinite(same).all() and (same - 1.5 * z0).abs().max() < 1e-12


@pytest.mark.parametrize("call, error, name", [
    (lambda: slerp(torch.zeros(2, 3) + 1, torch.ones(2, 3), 1.5), ValueError, "w"),
    (lambda: slerp(torch.ones(2, 3), torch.ones(2, 3), -0.1), ValueError, "w"),
    (lambda: slerp(torch.ones(2, 3), torch.ones(2, 3), "half"), TypeError, "w"),
    (lambda: slerp(torch.ones(2, 3), torch.ones(3, 3), 0.5), ValueError, "z0 and z1"),
    (lambda: slerp([1.0, 2.0], torch.ones(2), 0.5), TypeError, "z0"),
    (lambda: encode(MIXTURE.score_fn(VPSDE()), VPSDE(), torch.ones(2, 2, dtype=torch.long)),
     TypeError, "x"),
    (lambda: encode(MIXTURE.score_fn(VPSDE()), VPSDE(), torch.ones(2, 2), eps=0.0),
     ValueError, "eps"),
    (lambda: decode(MIXTURE.score_fn(VPSDE()), "vp", torch.ones(2, 2)), TypeError, "sde"),
    (lambda: decode(MIXTURE.score_fn(VPSDE()), VPSDE(), torch.ones(2, 2), rtol=-1.0),
     ValueError, "rtol"),
    (lambda: ddim(MIXTURE.score_fn(VPSDE()), VPSDE(), torch.ones(2, 2),
                  torch.tensor([0.1, 0.5])), ValueError, "times"),
    (lambda: ddim(None, VPSDE(), torch.ones(2, 2)), TypeError, "score_fn"),
])
def test_bad_input_names_the_argument(call, error, name):
    with pytest.raises(error, match=name):
        call()

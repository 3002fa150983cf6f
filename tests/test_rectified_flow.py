"""The rectified-flow path as a linear SDE, the velocity-output net and the flow-matching weighting.

Truth used below, written from the path definition and not read from sdelib: x_t = alpha x_0 +
sigma z with alpha = 1 - t, sigma = t (Liu, Gong & Liu 2023; Lipman et al. 2023), so m = 1 - t,
v = t^2, and the conditional flow-matching target is d x_t / dt = alpha' x_0 + sigma' z = z - x_0.
"""
import numpy as np
import pytest
import torch
from helpers import assert_close
from scipy.integrate import solve_ivp

from sdelib.losses import dsm_loss
from sdelib.nets import ScoreNet, score_of_velocity
from sdelib.sde import RectifiedFlowSDE, VESDE, make_sde, sde_from_config

F64 = torch.float64
GRID = np.linspace(0.01, 0.99, 50)


def _moments_from_the_process(sde):
    """m(t), v(t) on GRID from m' = A m, v' = 2 A v + g^2 (m(0) = 1, v(0) = 0), with A and g read
    only from the SDE's `drift` and `diffusion`."""
    def rhs(t, y):
        tt = torch.tensor([t], dtype=F64)
        A = sde.drift(torch.ones(1, 1, dtype=F64), tt).item()
        g = sde.diffusion(tt).item()
        return [A * y[0], 2 * A * y[1] + g * g]

    solution = solve_ivp(rhs, (0.0, GRID[-1]), [1.0, 0.0], method="DOP853", t_eval=GRID,
                         rtol=1e-12, atol=1e-16)
    assert solution.success, solution.message
    return solution.y


def test_the_sdes_moments_are_the_straight_path():
    m, v = _moments_from_the_process(RectifiedFlowSDE())
    # the ODE is solved at rtol 1e-12: 1e-8 leaves room for the solver, not for a wrong g^2
    np.testing.assert_allclose(m, 1 - GRID, rtol=1e-8)
    np.testing.assert_allclose(v, GRID ** 2, rtol=1e-8)


def test_a_wrong_diffusion_misses_the_path():
    """Negative control: g^2 = 2 t (sigma sigma', forgetting the alpha'/alpha term) gives another
    variance, which the same tolerance rejects."""
    class WrongDiffusion(RectifiedFlowSDE):
        def diffusion(self, t):
            return torch.sqrt(2 * t)

    _, v = _moments_from_the_process(WrongDiffusion())
    assert not np.allclose(v, GRID ** 2, rtol=1e-8)


def test_closed_forms_noise_level_and_its_inverse():
    sde = RectifiedFlowSDE()
    t = torch.linspace(0.001, 0.999, 41, dtype=F64)
    mean, std = sde.marginal_prob(torch.ones(len(t), 1, dtype=F64), t)
    assert_close(mean[:, 0], 1 - t, rtol=1e-15)
    assert_close(std, t, rtol=1e-15)
    assert_close(sde.scaled_std(t), t / (1 - t), rtol=1e-15)
    assert_close(sde.time_of_scaled_std(sde.scaled_std(t)), t, rtol=1e-13)
    assert sde.prior_std == sde.T == 0.999


def test_config_round_trip_and_the_end_time():
    sde = make_sde("rf", T=0.99)
    assert sde_from_config(sde.config()).config() == {"name": "rf", "T": 0.99}
    for bad in (1.0, 0.0, 1.5):
        with pytest.raises(ValueError, match="T"):
            RectifiedFlowSDE(T=bad)


def test_ve_std_at_tiny_times_keeps_its_digits_in_float32():
    """sigma^(2t) - 1 cancels in float32 at t = 2.5e-7 (7 %); the expm1 form does not."""
    sde = VESDE(25.0)
    t = torch.tensor([2.5e-7, 1e-6, 1e-5])
    exact = sde.marginal_std(t.double())
    assert_close(sde.marginal_std(t).double(), exact, rtol=1e-6)
    naive = torch.sqrt((25.0 ** (2 * t) - 1) / (2 * np.log(25.0))).double()   # negative control
    assert ((naive - exact).abs() / exact).max() > 1e-2


def test_velocity_net_returns_the_score_whose_flow_is_its_output():
    """ScoreNet(output='velocity') returns s; the probability-flow drift A x - g^2 s / 2 of that s
    is the U-Net's raw output (read with a forward hook)."""
    sde = RectifiedFlowSDE()
    torch.manual_seed(0)
    net = ScoreNet(sde, output="velocity").double()
    raw = {}
    net.tconv1.register_forward_hook(lambda module, inputs, output: raw.update(h=output))
    x = torch.randn(3, 1, 28, 28, dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    score = net(x, t)
    drift = sde.reverse(lambda x_, t_: score, probability_flow=True).drift(x, t)
    assert_close(drift, raw["h"], rtol=1e-10, atol=1e-10)
    assert net.config()["output"] == "velocity"
    assert "output" not in ScoreNet(sde).config()     # score nets keep their old config


def test_score_of_velocity_inverts_the_probability_flow_drift():
    sde = RectifiedFlowSDE()
    x = torch.randn(5, 2, dtype=F64)
    t = torch.linspace(0.1, 0.9, 5, dtype=F64)
    score = torch.randn(5, 2, dtype=F64)
    velocity = sde.reverse(lambda x_, t_: score, probability_flow=True).drift(x, t)
    assert_close(score_of_velocity(sde, x, t, velocity), score, rtol=1e-12, atol=1e-12)


def test_flow_matching_weighting_is_the_conditional_velocity_loss():
    """Per sample, the 'flow_matching' weighting (g^4 / 4) of |s + z / std|^2 equals
    |u_theta(x_t) - (z - x_0)|^2 with u_theta = A x - g^2 s / 2, for any score s."""
    sde = RectifiedFlowSDE()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.rand(64, 3, dtype=F64, generator=generator)
    t = torch.rand(64, dtype=F64, generator=generator) * 0.98 + 0.01
    z = torch.randn(64, 3, dtype=F64, generator=generator)

    def score_fn(x, t_):
        return -x / (t_[:, None] ** 2 + 0.3) + 0.1 * torch.sin(3 * x)   # any smooth field

    x_t = (1 - t[:, None]) * x0 + t[:, None] * z
    velocity = sde.reverse(score_fn, probability_flow=True).drift(x_t, t)
    direct = (velocity - (z - x0)).pow(2).sum(dim=1)
    weighted = dsm_loss(score_fn, sde, x0, t=t, z=z, weighting="flow_matching", reduce=False)
    assert_close(weighted, direct, rtol=1e-12)
    # negative control: the likelihood weighting g^2 is another loss
    other = dsm_loss(score_fn, sde, x0, t=t, z=z, weighting="likelihood", reduce=False)
    assert ((other - direct).abs() / direct).max() > 0.1

"""The prediction-target maps of sdelib.targets: score, noise, data, velocity and v at fixed (x, t).

Truth used below, written from the Gaussian path and not read from sdelib.targets: for data
x_0 ~ N(mu, c^2 I) and x_t = m x_0 + std z, (x_0, z, x_t) are jointly Gaussian, so
    E[x_0 | x_t] = mu + m c^2 (x_t - m mu) / (m^2 c^2 + v),    E[z | x_t] = std (x_t - m mu) / (m^2 c^2 + v),
    grad log p_t(x_t) = -(x_t - m mu) / (m^2 c^2 + v),
and every target's conditional form (z, x_0, d x_t/dt = m' x_0 + std' z, (m z - std x_0) / r) is
linear in (x_0, z), so its posterior mean is the same form of E[x_0 | x_t] and E[z | x_t]. The time
derivatives m' and std' are taken by autograd of `mean_coeff` and `marginal_std` alone, so the
velocity check also tests the SDE's drift and diffusion against its kernel.
"""
import math

import pytest
import torch
from helpers import assert_close

from sdelib import targets
from sdelib.losses import dsm_loss
from sdelib.nets import score_of_velocity
from sdelib.sde import SubVPSDE, VESDE, VPSDE, RectifiedFlowSDE

F64 = torch.float64
SDES = {"ve": VESDE(25.0), "vp": VPSDE(), "subvp": SubVPSDE(), "rf": RectifiedFlowSDE()}
# one time per sample, away from the ends where std -> 0 (t -> 0) or m -> 0 (rf, t -> 1)
T_GRID = torch.linspace(0.05, 0.95, 19, dtype=F64)


def _draws(n, dim=3, seed=0, dtype=F64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=generator, dtype=dtype),
            torch.randn(n, dim, generator=generator, dtype=dtype))


def _derivatives(sde, t):
    """(m, std, m', std') at t by autograd of the kernel's closed forms only."""
    t = t.clone().requires_grad_(True)
    m, std = sde.mean_coeff(t) * torch.ones_like(t), sde.marginal_std(t) * torch.ones_like(t)
    dm, dstd = (torch.autograd.grad(q.sum(), t)[0] if q.requires_grad else torch.zeros_like(q)
                for q in (m, std))                          # VE's m = 1 has no graph
    return m.detach(), std.detach(), dm, dstd


def _gaussian_truth(sde, t, x, mu=0.7, c2=0.4):
    """Posterior means and exact score for data N(mu, c2 I) (module docstring), per target."""
    m, std, dm, dstd = (q[:, None] for q in _derivatives(sde, t))
    total = m ** 2 * c2 + std ** 2
    offset = x - m * mu
    mean_x0 = mu + m * c2 * offset / total
    mean_z = std * offset / total
    return {"score": -offset / total, "noise": mean_z, "data": mean_x0,
            "velocity": dm * mean_x0 + dstd * mean_z,
            "v": (m * mean_z - std * mean_x0) / torch.sqrt(m ** 2 + std ** 2)}


@pytest.mark.parametrize("name", SDES)
def test_every_map_is_the_posterior_mean_of_its_conditional_target(name):
    sde = SDES[name]
    x, _ = _draws(len(T_GRID))
    x = 3 * x
    truth = _gaussian_truth(sde, T_GRID, x)
    for target in targets.TARGETS:
        # float64 throughout; the maps and the truth differ only by round-off (~1e-15 relative),
        # apart from VE's g^2 = sigma^(2t) and std' from autograd, good to ~1e-13
        assert_close(targets.from_score(sde, x, T_GRID, truth["score"], target), truth[target],
                     rtol=1e-10, atol=1e-12)


def test_a_wrong_diffusion_breaks_the_velocity_map():
    """Negative control: g^2 = 2 t for the rectified-flow path (the alpha'/alpha term forgotten)
    makes A x - g^2 s / 2 another field, far outside the tolerance above."""
    class WrongDiffusion(RectifiedFlowSDE):
        def diffusion(self, t):
            return torch.sqrt(2 * t)

    sde = WrongDiffusion()
    x, _ = _draws(len(T_GRID))
    truth = _gaussian_truth(sde, T_GRID, 3 * x)
    wrong = targets.from_score(sde, 3 * x, T_GRID, truth["score"], "velocity")
    assert (wrong - truth["velocity"]).abs().max() > 1e-2
    # the maps that use only m and std are unaffected
    assert_close(targets.from_score(sde, 3 * x, T_GRID, truth["score"], "data"), truth["data"],
                 rtol=1e-10, atol=1e-12)


def test_tweedie_with_the_std_instead_of_the_variance_fails():
    """Negative control for the closed-form check: (x + std s) / m is not E[x_0 | x_t]."""
    sde = SDES["vp"]
    x, _ = _draws(len(T_GRID))
    truth = _gaussian_truth(sde, T_GRID, 3 * x)
    m, std = sde.mean_coeff(T_GRID)[:, None], sde.marginal_std(T_GRID)[:, None]
    assert ((3 * x + std * truth["score"]) / m - truth["data"]).abs().max() > 1e-2


@pytest.mark.parametrize("name", SDES)
def test_round_trips_between_every_pair_of_targets_to_float64_precision(name):
    sde = SDES[name]
    x, value = _draws(len(T_GRID), seed=1)
    for source in targets.TARGETS:
        assert_close(targets.to_score(sde, x, T_GRID, targets.from_score(sde, x, T_GRID, value,
                                                                          source), source),
                     value, rtol=1e-9, atol=1e-10)
        for target in targets.TARGETS:
            there = targets.convert(sde, x, T_GRID, value, source, target)
            back = targets.convert(sde, x, T_GRID, there, target, source)
            # each map is affine with coefficients at most ~1e3 (VE's g^2 / 2 at t = 0.95 is
            # 230; rf's 1 / (1 - t) is 20), so a round trip keeps ~1e-12 relative
            assert_close(back, value, rtol=1e-9, atol=1e-9)


def test_a_round_trip_through_another_sde_does_not_return():
    """Negative control: data predicted under VP and read back as a score under rf is another score."""
    x, score = _draws(len(T_GRID), seed=2)
    data = targets.from_score(SDES["vp"], x, T_GRID, score, "data")
    assert (targets.to_score(SDES["rf"], x, T_GRID, data, "data") - score).abs().max() > 1e-2


@pytest.mark.parametrize("name", SDES)
def test_conditional_velocity_is_the_time_derivative_of_the_path(name):
    sde = SDES[name]
    x0, z = _draws(len(T_GRID), seed=3)
    m, std, dm, dstd = (q[:, None] for q in _derivatives(sde, T_GRID))
    assert_close(targets.conditional_target(sde, x0, z, T_GRID, "velocity"), dm * x0 + dstd * z,
                 rtol=1e-10, atol=1e-12)
    x_t = m * x0 + std * z
    for target, expected in (("score", -z / std), ("noise", z), ("data", x0),
                             ("v", (m * z - std * x0) / torch.sqrt(m ** 2 + std ** 2))):
        assert_close(targets.conditional_target(sde, x0, z, T_GRID, target), expected, rtol=1e-13)
        # the conditional target is the map applied to the kernel's score -z / std
        assert_close(targets.from_score(sde, x_t, T_GRID, -z / std, target), expected,
                     rtol=1e-10, atol=1e-12)


def test_rectified_flow_closed_forms():
    """Path (1 - t) x_0 + t z: target z - x_0; u = -(x + t s) / (1 - t); data x - t u and
    noise x + (1 - t) u from the velocity; lambda = g^4 / 4 = t^2 / (1 - t)^2."""
    sde = SDES["rf"]
    x0, z = _draws(len(T_GRID), seed=4)
    x, score = _draws(len(T_GRID), seed=5)
    t = T_GRID[:, None]
    assert_close(targets.conditional_target(sde, x0, z, T_GRID, "velocity"), z - x0, rtol=1e-13,
                 atol=1e-14)
    u = targets.from_score(sde, x, T_GRID, score, "velocity")
    assert_close(u, -(x + t * score) / (1 - t), rtol=1e-13)
    assert_close(targets.convert(sde, x, T_GRID, u, "velocity", "data"), x - t * u, rtol=1e-11,
                 atol=1e-12)
    assert_close(targets.convert(sde, x, T_GRID, u, "velocity", "noise"), x + (1 - t) * u,
                 rtol=1e-11, atol=1e-12)
    assert_close(targets.loss_weight(sde, T_GRID, "velocity"), T_GRID ** 2 / (1 - T_GRID) ** 2,
                 rtol=1e-13)
    assert_close(targets.to_score(sde, x, T_GRID, u, "velocity"),
                 score_of_velocity(sde, x, T_GRID, u), rtol=1e-11)


def test_v_target_is_salimans_and_hos_for_the_vp_path():
    """v = alpha eps - sigma x_0 with alpha = m, sigma = std, alpha^2 + sigma^2 = 1 (VP)."""
    sde = SDES["vp"]
    x0, z = _draws(len(T_GRID), seed=6)
    alpha, sigma = sde.mean_coeff(T_GRID)[:, None], sde.marginal_std(T_GRID)[:, None]
    assert_close(alpha ** 2 + sigma ** 2, torch.ones_like(alpha), rtol=1e-14)
    assert_close(targets.conditional_target(sde, x0, z, T_GRID, "v"), alpha * z - sigma * x0,
                 rtol=1e-13, atol=1e-14)
    assert_close(targets.loss_weight(sde, T_GRID, "v"), (sigma / alpha)[:, 0] ** 2, rtol=1e-12)


@pytest.mark.parametrize("name", SDES)
def test_each_target_loss_is_dsm_with_its_weighting(name):
    """|from_score(s) - conditional_target|^2 = loss_weight |s + z / std|^2 per sample, for any s;
    the noise and velocity weightings are dsm_loss's 'std2' and 'flow_matching'."""
    sde = SDES[name]
    x0, z = _draws(len(T_GRID), seed=7)

    def score_fn(x, t):                                     # any smooth field
        return -x / (t[:, None] + 0.3) + 0.2 * torch.sin(2 * x)

    std = sde.marginal_std(T_GRID)[:, None]
    x_t = sde.perturb(x0, T_GRID, z)
    dsm = (score_fn(x_t, T_GRID) + z / std).pow(2).sum(1)
    for target in targets.TARGETS:
        direct = (targets.from_score(sde, x_t, T_GRID, score_fn(x_t, T_GRID), target)
                  - targets.conditional_target(sde, x0, z, T_GRID, target)).pow(2).sum(1)
        assert_close(direct, targets.loss_weight(sde, T_GRID, target) * dsm, rtol=1e-9)
    for target, weighting in (("noise", "std2"), ("velocity", "flow_matching")):
        assert_close(dsm_loss(score_fn, sde, x0, t=T_GRID, z=z, weighting=weighting, reduce=False),
                     targets.loss_weight(sde, T_GRID, target) * dsm, rtol=1e-9)
    # negative control: the likelihood weighting g^2 is none of the five for rf and VP
    if name in ("rf", "vp"):
        likelihood = dsm_loss(score_fn, sde, x0, t=T_GRID, z=z, weighting="likelihood",
                              reduce=False)
        for target in targets.TARGETS:
            weighted = targets.loss_weight(sde, T_GRID, target) * dsm
            assert ((likelihood - weighted).abs() / weighted).max() > 0.1, target


def test_maps_broadcast_over_images_and_keep_the_dtype():
    sde = SDES["rf"]
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(3, 1, 4, 4, generator=generator)
    score = torch.randn(3, 1, 4, 4, generator=generator)
    t = torch.tensor([0.2, 0.5, 0.8])
    u = targets.from_score(sde, x, t, score, "velocity")
    assert u.dtype == torch.float32 and u.shape == x.shape
    expected = -(x + t[:, None, None, None] * score) / (1 - t[:, None, None, None])
    assert_close(u, expected, rtol=1e-5, atol=1e-6)
    # a float t is one time for the whole batch
    assert_close(targets.from_score(sde, x, 0.5, score, "data"),
                 targets.from_score(sde, x, torch.full((3,), 0.5), score, "data"), rtol=0)


def test_bad_input_says_what_was_wrong():
    sde = SDES["vp"]
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="target.*'eps'"):
        targets.from_score(sde, x, 0.5, x, "eps")
    with pytest.raises(ValueError, match="source"):
        targets.convert(sde, x, 0.5, x, "epsilon", "data")
    with pytest.raises(ValueError, match="shape"):
        targets.from_score(sde, x, 0.5, torch.zeros(2, 4), "data")
    with pytest.raises(ValueError, match=r"t must lie in \(0, 1"):
        targets.from_score(sde, x, torch.tensor([0.0, 0.5]), x, "noise")
    with pytest.raises(ValueError, match=r"t must lie in \(0, 0.999\]"):
        targets.to_score(SDES["rf"], x, 1.0, x, "velocity")
    with pytest.raises(ValueError, match="shape"):
        targets.from_score(sde, x, torch.full((3,), 0.5), x, "data")
    with pytest.raises(TypeError, match="sde must be a SDE"):
        targets.from_score("vp", x, 0.5, x, "data")
    with pytest.raises(ValueError, match="same shape"):
        targets.conditional_target(sde, x, torch.zeros(2, 2), 0.5, "velocity")
    assert math.isclose(float(targets.loss_weight(sde, torch.tensor([0.5]), "score")), 1.0)

"""Tests of nets.edm_preconditioning (Karras et al. 2022, eq. 7 and Table 1, derived in
their Appendix B.6), against the conditions it is derived from, written from the paper.

For x = y + sigma n, y of variance sigma_data^2, n ~ N(0, 1) independent of y:
  (i)   Var[c_in x] = c_in^2 (sigma^2 + sigma_data^2) = 1           (unit input);
  (ii)  Var[(y - c_skip x) / c_out]
        = ((1 - c_skip)^2 sigma_data^2 + c_skip^2 sigma^2) / c_out^2 = 1  (unit target);
  (iii) c_skip minimises c_out under (ii)    (least amplification of F's errors).

Tolerances: each coefficient is a handful of float64 operations (each rounding
<= 1.1e-16 relative), so the identities hold to 1e-13 over sigma in [1e-3, 1e3].
The grid search of (iii) has spacing 1e-5 in c_skip; c_out^2 is quadratic in c_skip
with curvature 2 (sigma^2 + sigma_data^2), so the grid's minimum lies within
(1e-5)^2 (sigma^2 + sigma_data^2) of the true one.
"""
import math

import pytest
import torch
from helpers import assert_close

from sdelib.nets import edm_preconditioning
from sdelib.sde import VPSDE

F64 = torch.float64
SIGMAS = torch.logspace(-3, 3, 61, dtype=F64)


def unit_variance_residuals(sigma, sigma_data, c_skip, c_out, c_in):
    """Var[c_in x] - 1 and Var[target] - 1 of conditions (i) and (ii), closed form."""
    input_var = c_in ** 2 * (sigma ** 2 + sigma_data ** 2)
    target_var = ((1 - c_skip) ** 2 * sigma_data ** 2
                  + c_skip ** 2 * sigma ** 2) / c_out ** 2
    return input_var - 1, target_var - 1


def test_closed_forms_at_sigma_equal_to_sigma_data():
    for s in (0.5, 1.0, 3.0):
        c_skip, c_out, c_in, c_noise = edm_preconditioning(s, sigma_data=s)
        expected = [0.5, s / math.sqrt(2), 1 / (s * math.sqrt(2)), math.log(s) / 4]
        for got, want in zip((c_skip, c_out, c_in, c_noise), expected):
            # a few roundings each: within 4 ulp; absolute 1e-17 where ln 1 = 0
            assert_close(got, torch.tensor(want, dtype=F64), rtol=4.5e-16, atol=1e-17)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0, 2.0])
def test_input_and_target_have_unit_variance_at_every_sigma(sigma_data):
    c_skip, c_out, c_in, _ = edm_preconditioning(SIGMAS, sigma_data)
    res_in, res_target = unit_variance_residuals(SIGMAS, sigma_data, c_skip, c_out,
                                                 c_in)
    assert float(res_in.abs().max()) < 1e-13
    assert float(res_target.abs().max()) < 1e-13


def test_negative_control_a_wrong_c_out_breaks_the_unit_target():
    """c_out without its square root (a plausible slip) must fail the same check."""
    sigma_data = 0.5
    c_skip, _, c_in, _ = edm_preconditioning(SIGMAS, sigma_data)
    wrong = SIGMAS * sigma_data / (SIGMAS ** 2 + sigma_data ** 2)
    _, res_target = unit_variance_residuals(SIGMAS, sigma_data, c_skip, wrong, c_in)
    with pytest.raises(AssertionError):
        assert float(res_target.abs().max()) < 1e-13


def test_tutorial_parametrisation_has_unit_target_but_not_unit_input():
    """ScoreNet's D = x + sigma^2 s, s = F / sigma, is c_skip = 1, c_out = sigma,
    c_in = 1: (ii) holds (the division by std), (i) fails, and c_out exceeds EDM's."""
    sigma_data = 0.5
    ones = torch.ones_like(SIGMAS)
    res_in, res_target = unit_variance_residuals(SIGMAS, sigma_data, ones, SIGMAS, ones)
    assert float(res_target.abs().max()) < 1e-13
    assert float(res_in.abs().max()) > 1e5       # Var[x] - 1 = sigma^2 - 0.75 at 1e3
    assert bool((edm_preconditioning(SIGMAS, sigma_data)[1] < SIGMAS).all())


@pytest.mark.parametrize("sigma", [0.01, 0.5, 2.0, 80.0])
def test_c_skip_minimises_c_out_under_the_unit_target(sigma):
    sigma_data = 0.5
    grid = torch.linspace(0.0, 1.0, 100_001, dtype=F64)
    c_out_sq = (1 - grid) ** 2 * sigma_data ** 2 + grid ** 2 * sigma ** 2
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    assert abs(float(grid[c_out_sq.argmin()]) - float(c_skip)) <= 1e-5
    slack = 1e-10 * (sigma ** 2 + sigma_data ** 2)
    assert float(c_out) ** 2 <= float(c_out_sq.min()) + 1e-15
    assert float(c_out) ** 2 >= float(c_out_sq.min()) - slack


def test_vp_mean_coefficient_is_c_in_for_unit_variance_data():
    """x_t = m (y + sigma~ n) with m = e^(-B/2) = 1 / sqrt(1 + sigma~^2): the VP SDE
    applies EDM's c_in for sigma_data = 1 itself (Karras et al. 2022, Table 1)."""
    sde = VPSDE()
    t = torch.linspace(1e-3, 1.0, 50, dtype=F64)
    sigma = sde.scaled_std(t)
    assert_close(edm_preconditioning(sigma, sigma_data=1.0)[2], sde.mean_coeff(t),
                 rtol=1e-13)
    with pytest.raises(AssertionError):          # negative control: sigma_data = 0.5
        assert_close(edm_preconditioning(sigma, 0.5)[2], sde.mean_coeff(t), rtol=1e-3)


def test_shape_and_dtype_follow_sigma():
    out = edm_preconditioning(torch.full((3, 2), 0.7, dtype=torch.float32))
    assert all(c.shape == (3, 2) and c.dtype == torch.float32 for c in out)
    assert all(c.dtype == F64 and c.ndim == 0 for c in edm_preconditioning(2))


@pytest.mark.parametrize("sigma, error, pattern", [
    (0.0, ValueError, "sigma must be positive"),
    (-1.0, ValueError, "sigma must be positive"),
    (float("nan"), ValueError, "sigma must be positive"),
    (float("inf"), ValueError, "sigma must be positive"),
    (torch.tensor([1.0, 0.0]), ValueError, "sigma must be positive"),
    ("1.0", TypeError, "sigma must be"),
    (True, TypeError, "sigma must be"),
    (torch.tensor([1, 2]), TypeError, "sigma must be a floating tensor"),
])
def test_bad_sigma_is_rejected_by_name(sigma, error, pattern):
    with pytest.raises(error, match=pattern):
        edm_preconditioning(sigma)


@pytest.mark.parametrize("sigma_data, error", [
    (0.0, ValueError), (-0.5, ValueError), (float("nan"), ValueError),
    ("0.5", TypeError)])
def test_bad_sigma_data_is_rejected_by_name(sigma_data, error):
    with pytest.raises(error, match="sigma_data"):
        edm_preconditioning(1.0, sigma_data)

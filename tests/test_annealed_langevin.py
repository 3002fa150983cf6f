"""NCSN's annealed Langevin dynamics (Song & Ermon 2019, Alg. 1), `samplers.annealed_langevin`.

The mode-weight test follows the paper's Sec. 3.2 example: p = 1/5 N((-5,-5), I) + 4/5 N((5,5), I)
with the exact score of p perturbed at each noise level. The light mode's fraction among n
independent chains has binomial standard error sqrt(w (1 - w) / n); the checks use K = 4 of them
(P(|N(0,1)| > 4) = 6e-5). Plain Langevin (one small noise level) from a uniform start on
[-8, 8]^2 keeps each chain in its starting basin, whose area is 0.491: 32 SE from 0.2 at n = 2000.
"""
import math

import numpy as np
import pytest
import torch
from helpers import assert_close

from sdelib import VESDE
from sdelib.data import GaussianMixture
from sdelib.samplers import annealed_langevin

K = 4.0
N = 2_000
SDE = VESDE(25.0)
TWO_MODES = GaussianMixture(means=[[-5.0, -5.0], [5.0, 5.0]], covs=None, weights=[0.2, 0.8])
SIGMAS = np.geomspace(9.0, 0.1, 10)        # sigma_1 ~ the distance between the modes (14)


def _light_z(sigmas, steps_per_level, step_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_init = torch.rand(N, 2, generator=generator, dtype=torch.float64) * 16 - 8
    result = annealed_langevin(TWO_MODES.score_fn(SDE), SDE, (N, 2), sigmas=sigmas,
                               steps_per_level=steps_per_level, step_size=step_size,
                               generator=generator, x_init=x_init)
    fraction = (result.samples.sum(dim=1) < 0).double().mean().item()
    return (fraction - 0.2) / math.sqrt(0.2 * 0.8 / N), result.nfe


def test_exact_score_recovers_the_mode_weights():
    z, nfe = _light_z(SIGMAS, 100, 2e-3)
    assert abs(z) < K, z
    assert nfe == 10 * 100


def test_plain_langevin_at_one_small_noise_level_keeps_the_wrong_weights():
    z, _ = _light_z([0.1], 1000, 2e-3)                           # same number of evaluations
    assert abs(z) > K, z


def test_a_too_large_step_diverges_with_a_clear_error():
    with pytest.raises(FloatingPointError, match="step_size is too large"):
        _light_z(SIGMAS, 20, 50.0)


def test_unadjusted_langevin_variance_with_a_noise_conditional_score():
    """sde=None: score_fn(x, sigma) gets the noise level itself. For data N(0, I) perturbed at
    sigma the score is -x / v, v = 1 + sigma^2; the chain x + d s + sqrt(2 d) z with d = alpha / 2
    is Gaussian with stationary variance v / (1 - d / (2 v)) (exact for the discrete chain). Its
    estimate from n samples per coordinate has standard error var * sqrt(2 / (n - 1))."""
    seen = set()

    def score(x, sigma):
        seen.add(round(float(sigma[0]), 12))
        return -x / (1 + sigma[:, None] ** 2)

    n, sigma, step = 20_000, 1.0, 0.5
    result = annealed_langevin(score, None, (n, 2), sigmas=[sigma], steps_per_level=200,
                               step_size=step, generator=torch.Generator().manual_seed(1))
    v, d = 1 + sigma ** 2, step / 2
    expected = v / (1 - d / (2 * v))
    var = result.samples.double().var(dim=0)
    assert ((var - expected).abs() < K * expected * math.sqrt(2 / (n - 1))).all(), var
    assert seen == {1.0}
    # negative control: the target's own variance v is far outside the same band
    assert ((var - v).abs() > K * expected * math.sqrt(2 / (n - 1))).all()


def test_noise_levels_map_to_the_sdes_times_and_the_step_sizes_follow_alg_1():
    times, moves = [], []
    score = lambda x, t: torch.zeros_like(x)                     # noqa: E731 - pure noise
    annealed_langevin(score, SDE, (5_000, 2), sigmas=[4.0, 1.0, 0.5], steps_per_level=1,
                      step_size=0.01, generator=torch.Generator().manual_seed(2),
                      x_init=torch.zeros(5_000, 2),
                      callback=lambda k, t, x: (times.append(t), moves.append(x.clone())))
    sigma = SDE.scaled_std(torch.tensor(times, dtype=torch.float64))
    assert_close(sigma, torch.tensor([4.0, 1.0, 0.5]), rtol=1e-6)
    # with s = 0 each step adds sqrt(alpha_i) z: alpha_i = 0.01 sigma_i^2 / 0.25 = 0.04 sigma_i^2
    steps = [moves[0]] + [b - a for a, b in zip(moves, moves[1:])]
    for x, s in zip(steps, [4.0, 1.0, 0.5]):
        assert abs(x.double().std().item() / (0.2 * s) - 1) < 0.03   # sd of a sd: 1% at n = 10^4


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sigmas=[0.5, 1.0]), ValueError, "strictly decreasing"),
    (dict(sigmas=[1.0, 1.0]), ValueError, "strictly decreasing"),
    (dict(sigmas=[1.0, 0.0]), ValueError, "every entry of sigmas"),
    (dict(sigmas=[1.0, -0.1]), ValueError, "every entry of sigmas"),
    (dict(sigmas=[]), ValueError, "at least one noise level"),
    (dict(sigmas="1.0"), TypeError, "sigmas must be a sequence"),
    (dict(sigmas=[20.0, 1.0]), ValueError, "within the SDE's noise levels"),
    (dict(steps_per_level=0), ValueError, "steps_per_level"),
    (dict(step_size=0.0), ValueError, "step_size"),
    (dict(step_size=float("inf")), ValueError, "step_size"),
    (dict(generator=3), TypeError, "generator"),
    (dict(callback="print"), TypeError, "callback"),
    (dict(shape=(4,)), ValueError, "shape"),
    (dict(x_init=torch.zeros(3, 2)), ValueError, "x_init has shape"),
])
def test_bad_input_is_refused_naming_the_argument(kwargs, error, match):
    args = dict(sigmas=[1.0, 0.1], steps_per_level=2, step_size=1e-3, shape=(4, 2)) | kwargs
    shape = args.pop("shape")
    with pytest.raises(error, match=match):
        annealed_langevin(TWO_MODES.score_fn(SDE), SDE, shape, **args)


def test_a_bad_sde_or_score_is_refused():
    with pytest.raises(TypeError, match="sde must be a SDE"):
        annealed_langevin(TWO_MODES.score_fn(SDE), "ve", (4, 2), sigmas=[1.0])
    with pytest.raises(TypeError, match="score_fn must be a function"):
        annealed_langevin(None, SDE, (4, 2), sigmas=[1.0])

"""Tests of sdelib.metrics: the mean ± standard error against numpy, the held-out DSM loss's
fixed noise (independent of the batch size) and its value for a model with a known loss, and the
Fréchet distance against closed forms and an independent matrix square root (scipy)."""
import math

import numpy as np
import pytest
import torch

from scipy import linalg

from sdelib.metrics import (Estimate, bootstrap_standard_error, class_balance, classifier_features,
                            dsm_test_loss, frechet_distance, frechet_distance_from_moments,
                            mean_and_standard_error)
from sdelib.nets import MNISTClassifier
from sdelib.sde import VESDE

K_SE = 4.0   # 4 standard errors: P(|N(0,1)| > 4) = 6e-5 per check


@pytest.mark.parametrize("values", [
    [1.0, 2.0],
    [3.5, -1.25, 0.0, 7.0, 2.5],
    np.random.default_rng(30).normal(10.0, 3.0, size=257),
    torch.arange(12.0).reshape(3, 4),                       # any shape is flattened
])
def test_mean_and_standard_error_match_numpy(values):
    array = np.asarray(values, dtype=np.float64).ravel()
    est = mean_and_standard_error(values)
    assert isinstance(est, Estimate) and est.n == array.size
    assert est.mean == pytest.approx(array.mean(), rel=1e-12, abs=1e-12)
    # Bessel-corrected sample std over sqrt(n)
    assert est.standard_error == pytest.approx(array.std(ddof=1) / math.sqrt(array.size), rel=1e-12)


def test_estimate_prints_mean_plus_minus_standard_error():
    assert str(Estimate(1.23456, 0.0456, 10)) == "1.235 ± 0.046 (n=10)"


@pytest.mark.parametrize("values", [[], [1.0], torch.tensor([[2.0]])])
def test_fewer_than_two_values_are_rejected(values):
    with pytest.raises(ValueError, match="at least 2"):
        mean_and_standard_error(values)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_are_rejected(bad):
    with pytest.raises(ValueError, match="not finite"):
        mean_and_standard_error([1.0, bad, 2.0])


class ZeroScore(torch.nn.Module):
    """s(x, t) = 0 (with a parameter, as dsm_test_loss reads the model's device from it)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, t):
        return torch.zeros_like(x)


def test_dsm_test_loss_noise_does_not_depend_on_the_batch_size():
    images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(31))
    sde = VESDE(25.0)

    class Score(ZeroScore):
        def forward(self, x, t):
            return -x * t[:, None, None, None]

    a = dsm_test_loss(Score(), sde, images, batch_size=7, seed=3)
    b = dsm_test_loss(Score(), sde, images, batch_size=256, seed=3)
    c = dsm_test_loss(Score(), sde, images, batch_size=256, seed=4)
    assert a.n == b.n == 50
    assert a.mean == pytest.approx(b.mean, rel=1e-6) and a.standard_error == pytest.approx(
        b.standard_error, rel=1e-5)
    assert c.mean != pytest.approx(a.mean, rel=1e-6)      # another seed, other noise


def test_dsm_test_loss_of_the_zero_score_is_the_data_dimension():
    """With s = 0 the per-image loss is |z|^2 ~ chi^2_D, mean D = 16: the estimate must be within
    k = 4 of its own SE of 16, and the SE must be near the chi^2 value sqrt(2 D / n)."""
    n, dim = 2000, 16
    images = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(32))
    est = dsm_test_loss(ZeroScore(), VESDE(25.0), images, batch_size=500, seed=5)
    assert abs(est.mean - dim) < K_SE * est.standard_error
    # The SE itself is a sample std over sqrt(n); its relative SE is 0.5 sqrt((2 + kappa) / n) with
    # kappa = 12 / D the excess kurtosis of chi^2_D, i.e. 1.85 % at n = 2000: 4 of those is 7.4 %.
    assert est.standard_error == pytest.approx(math.sqrt(2 * dim / n), rel=0.075)
    # negative control: a loss 10 % too high (12.6 SE at this n) is outside the band
    assert abs(est.mean - 1.1 * dim) > K_SE * est.standard_error


# ---- Fréchet distance -------------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # commuting covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (4 + 1 + 0)
    value = frechet_distance_from_moments(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b))
    assert value == pytest.approx(10.0, abs=1e-12)


def test_frechet_distance_with_non_commuting_covariances_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    cov_a, cov_b = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu_a, mu_b = rng.normal(size=5), rng.normal(size=5)
    # The textbook form with the (non-symmetric) product's square root, by scipy.
    reference = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b)).real)
    assert frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b) == pytest.approx(reference, rel=1e-9)
    assert frechet_distance_from_moments(mu_a, cov_a, mu_a, cov_a) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shift,should_pass", [(1.0, True), (0.9, False)], ids=["right", "shift-0.9"])
def test_frechet_distance_of_samples_estimates_the_population_value(shift, should_pass):
    # N(0, I) against N(shift e, I), e a unit vector: the population distance is shift^2, for the
    # right shift 1. The plug-in estimate's bias is O(d / n) = 4e-4 here, far below its bootstrap
    # standard error (~0.03); a shift of 0.9 (distance 0.81) must fail the same 4-SE check.
    generator = torch.Generator().manual_seed(5)
    n, d = 10_000, 4
    a = torch.randn(n, d, generator=generator, dtype=torch.float64)
    b = torch.randn(n, d, generator=generator, dtype=torch.float64)
    b[:, 0] += shift
    estimate = frechet_distance(a, b)
    se = bootstrap_standard_error(frechet_distance, a, b, n_boot=40)
    assert 0.01 < se < 0.06                              # theory: sqrt(8 / n) = 0.028
    assert (abs(estimate - 1.0) < K_SE * se) == should_pass, (estimate, se)


def test_frechet_distance_rejects_bad_features():
    with pytest.raises(ValueError, match="not finite"):
        frechet_distance(torch.tensor([[0.0, 1.0], [float("nan"), 1.0], [1.0, 2.0]]), torch.randn(3, 2))
    with pytest.raises(ValueError, match="features must be"):
        frechet_distance(torch.randn(1, 2), torch.randn(3, 2))


def test_classifier_features_reject_images_outside_the_unit_interval_or_of_wrong_shape():
    classifier = MNISTClassifier().eval()
    assert classifier_features(classifier, torch.rand(3, 1, 28, 28)).shape == (3, 128)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        classifier_features(classifier, torch.rand(3, 1, 28, 28) * 2)
    with pytest.raises(ValueError, match="NaN"):
        classifier_features(classifier, torch.full((3, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="28, 28"):
        classifier_features(classifier, torch.rand(3, 1, 32, 32))
    assert class_balance(classifier, torch.rand(7, 1, 28, 28)).sum().item() == pytest.approx(1.0)

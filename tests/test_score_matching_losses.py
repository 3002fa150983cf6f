"""Implicit (Hyvärinen 2005) and sliced (Song, Garg, Shi & Ermon 2019) score matching against
closed forms.

For Gaussian data N(mu, S) and the exact score s = -S^-1 (x - mu): grad s = -S^-1, so
    ISM = E[tr grad s + 1/2 |s|^2] = -tr S^-1 + 1/2 E[(x - mu)^T S^-2 (x - mu)] = -1/2 tr S^-1,
and for the scaled score c s: (-c + c^2 / 2) tr S^-1, larger than -1/2 tr S^-1 for every c != 1
(the objective is 1/2 E|s - grad log p|^2 + const, minimised by the true score). SSM has the same
expectation for v with E[v v^T] = I. Monte Carlo checks use K_SE = 4 standard errors of the mean
(per-sample sd / sqrt(n)): P(|N(0,1)| > 4) = 6e-5 per check, so a correct loss fails about once in
16,000 runs, and the negative controls are sized to sit > 10 SE away.
"""
import math

import pytest
import torch
from helpers import assert_close

from sdelib.data import gaussian, ring_mixture
from sdelib.losses import implicit_score_matching_loss, sliced_score_matching_loss

F64 = torch.float64
K_SE = 4.0
N = 40_000
COV = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=F64)
DATA = gaussian([1.0, -1.0, 0.5], COV)
HALF_TRACE = 0.5 * torch.linalg.inv(COV).trace().item()        # 1/2 tr S^-1


def _samples(seed=0):
    return DATA.sample(N, generator=torch.Generator().manual_seed(seed))


def _mean_se(per_sample):
    per_sample = per_sample.detach()
    return per_sample.mean().item(), per_sample.std().item() / math.sqrt(len(per_sample))


def _loss(kind, score, x, seed=1):
    if kind == "ism":
        return implicit_score_matching_loss(score, x, reduce=False)
    projection, vr = kind.split("-")[1], kind.endswith("vr")
    return sliced_score_matching_loss(score, x, projection=projection, variance_reduction=vr,
                                      generator=torch.Generator().manual_seed(seed),
                                      reduce=False)


KINDS = ["ism", "ssm-rademacher", "ssm-gaussian", "ssm-rademacher-vr"]


@pytest.mark.parametrize("kind", KINDS)
def test_exact_gaussian_score_gives_minus_half_trace_of_the_precision(kind):
    mean, se = _mean_se(_loss(kind, DATA.score, _samples()))
    assert abs(mean + HALF_TRACE) < K_SE * se, (mean, -HALF_TRACE, se)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [0.6, 1.5])
def test_a_scaled_score_gives_its_larger_closed_form_and_fails_the_check(kind, scale):
    x = _samples(2)
    per_sample = _loss(kind, lambda x: scale * DATA.score(x), x)
    mean, se = _mean_se(per_sample)
    expected = (-scale + scale ** 2 / 2) * 2 * HALF_TRACE
    assert abs(mean - expected) < K_SE * se, (mean, expected, se)
    # negative control: the check of the exact score's value fails, on the high side
    assert mean - (-HALF_TRACE) > K_SE * se


def test_ism_trace_is_exact_for_a_linear_score():
    a = torch.tensor([[-1.0, 0.3, 0.0], [0.1, -2.0, 0.5], [0.0, 0.4, -0.7]], dtype=F64)
    x = _samples()[:50]
    per_sample = implicit_score_matching_loss(lambda x: x @ a.T, x, reduce=False)
    expected = a.trace() + 0.5 * (x @ a.T).pow(2).sum(dim=1)
    assert_close(per_sample.detach(), expected, rtol=1e-12)      # float64 round-off only


def test_ssm_with_given_projections_is_the_projected_formula():
    a = torch.tensor([[-1.0, 0.3, 0.0], [0.1, -2.0, 0.5], [0.0, 0.4, -0.7]], dtype=F64)
    x = _samples()[:50]
    v = torch.randn(2, 50, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    per_sample = sliced_score_matching_loss(lambda x: x @ a.T, x, v=v, n_projections=2,
                                            reduce=False)
    s = x @ a.T
    terms = [(vk @ a * vk).sum(1) + 0.5 * (vk * s).sum(1) ** 2 for vk in v]
    assert_close(per_sample.detach(), sum(terms) / 2, rtol=1e-12)


def test_ism_difference_is_half_the_squared_score_error_on_a_mixture():
    """Hyvärinen's identity on non-Gaussian data: ISM(s) - ISM(s*) = 1/2 E|s - s*|^2 (paired)."""
    ring = ring_mixture()
    x = ring.sample(N, generator=torch.Generator().manual_seed(4))
    wrong = lambda x: 0.8 * ring.score(x) + 0.3                  # noqa: E731
    diff = (implicit_score_matching_loss(wrong, x, reduce=False)
            - implicit_score_matching_loss(ring.score, x, reduce=False)).detach()
    error = 0.5 * (wrong(x) - ring.score(x)).pow(2).sum(dim=1)
    mean, se = _mean_se(diff - error)
    assert abs(mean) < K_SE * se
    assert diff.mean() > K_SE * diff.std() / math.sqrt(N)       # the wrong score is worse


def test_losses_are_differentiable_in_the_parameters():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    x = _samples()[:64].float()
    for loss in (implicit_score_matching_loss(net, x), sliced_score_matching_loss(net, x)):
        net.zero_grad()
        loss.backward()
        # the trace term depends on the first layer's weights only through second derivatives
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with torch.no_grad():                                        # evaluation: no graph kept
        assert implicit_score_matching_loss(net, x).grad_fn is None


def test_a_noise_conditional_score_gets_its_t():
    seen = []
    x = _samples()[:8]
    implicit_score_matching_loss(lambda x, t: seen.append(t) or -x, x, t=torch.full((8,), 0.1))
    assert len(seen) == 1 and seen[0].shape == (8,)


@pytest.mark.parametrize("fn", [implicit_score_matching_loss, sliced_score_matching_loss])
@pytest.mark.parametrize("args,kwargs,error,match", [
    ((DATA.score, torch.zeros(4, 3, dtype=torch.long)), {}, TypeError, "x must be a floating"),
    ((DATA.score, torch.zeros(4, 1, 3)), {}, ValueError, r"x must be a batch of vectors"),
    ((DATA.score, torch.full((4, 3), float("nan"))), {}, ValueError, "x has NaN"),
    (("score", torch.zeros(4, 3)), {}, TypeError, "score_fn must be a function"),
    ((lambda x: x[:, :2], torch.zeros(4, 3)), {}, ValueError, "score_fn returned shape"),
    ((DATA.score, torch.zeros(4, 3)), {"reduce": 1}, TypeError, "reduce must be True or False"),
])
def test_bad_input_is_refused_naming_the_argument(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"n_projections": 0}, ValueError, "n_projections"),
    ({"projection": "uniform"}, ValueError, "projection"),
    ({"generator": 0}, TypeError, "generator"),
    ({"v": torch.zeros(1, 4, 2, dtype=F64)}, ValueError, "v must have shape"),
    ({"variance_reduction": "yes"}, TypeError, "variance_reduction"),
])
def test_sliced_bad_arguments_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        sliced_score_matching_loss(DATA.score, torch.zeros(4, 3, dtype=F64), **kwargs)


def test_non_finite_scores_raise():
    with pytest.raises(FloatingPointError, match="implicit_score_matching_loss"):
        implicit_score_matching_loss(lambda x: x / 0.0, torch.ones(4, 3))

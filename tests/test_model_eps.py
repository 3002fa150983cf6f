"""A model's training eps travels with it: samplers, latents and the likelihood start there by
default and refuse a smaller eps, naming both values."""
import pytest
import torch

from sdelib.latents import ddim, encode
from sdelib.likelihood import ode_likelihood
from sdelib.pretrained import load_pretrained
from sdelib.samplers import euler_maruyama, probability_flow_ode
from sdelib.sde import VPSDE

SDE = VPSDE(0.1, 20.0)


class GaussianScore:
    """The exact score of N(0, I) data under VP (p_t = N(0, I) for every t), with a training eps."""

    def __init__(self, trained_eps=None):
        if trained_eps is not None:
            self.trained_eps = trained_eps

    def __call__(self, x, t):
        return -x


def _last_time(sampler, score_fn, **kwargs):
    times = []
    sampler(score_fn, SDE, (4, 2), generator=torch.Generator().manual_seed(0),
            callback=lambda i, t, x: times.append(float(t)), **kwargs)
    return times[-1]


def test_a_shipped_model_carries_the_eps_it_was_trained_from():
    model, _ = load_pretrained("mnist-subvp")
    assert model.trained_eps == 0.0135
    model, _ = load_pretrained("mnist-vp")
    assert model.trained_eps == 1e-4


def test_a_sampler_stops_at_the_models_eps_when_it_is_above_the_default():
    assert _last_time(euler_maruyama, GaussianScore(0.02), steps=10) == pytest.approx(0.02)
    # negative control: a model trained from below 1e-3 keeps the sampler's default
    assert _last_time(euler_maruyama, GaussianScore(1e-4), steps=10) == pytest.approx(1e-3)
    assert _last_time(euler_maruyama, GaussianScore(), steps=10) == pytest.approx(1e-3)


@pytest.mark.parametrize("call", [
    lambda f: euler_maruyama(f, SDE, (4, 2), steps=5, eps=1e-3),
    lambda f: probability_flow_ode(f, SDE, (4, 2), eps=1e-3),
    lambda f: ode_likelihood(f, SDE, torch.zeros(2, 2), eps=1e-3),
    lambda f: encode(f, SDE, torch.zeros(2, 2), eps=1e-3),
    lambda f: ddim(f, SDE, torch.zeros(2, 2), steps=3, eps=1e-3),
], ids=["euler_maruyama", "probability_flow_ode", "ode_likelihood", "encode", "ddim"])
def test_an_eps_below_the_models_is_refused_naming_both(call):
    with pytest.raises(ValueError, match=r"eps=0\.001 is below eps=0\.02.*use eps >= 0\.02"):
        call(GaussianScore(0.02))
    call(GaussianScore(1e-3))          # negative control: at the model's eps it runs


def test_ddim_on_explicit_times_refuses_a_grid_below_the_models_eps():
    times = torch.tensor([1.0, 0.5, 1e-3], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"t=0\.001, below eps=0\.01"):
        ddim(GaussianScore(1e-2), SDE, torch.zeros(2, 2), times)
    # the same grid is fine for a model trained from 1e-3 and for one with no training eps
    for score_fn in (GaussianScore(1e-3), GaussianScore()):
        assert ddim(score_fn, SDE, torch.zeros(2, 2), times).nfe == 2


def test_the_likelihood_starts_at_the_models_eps_by_default():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    by_default = ode_likelihood(GaussianScore(0.05), SDE, x, divergence="exact")
    explicit = ode_likelihood(GaussianScore(), SDE, x, divergence="exact", eps=0.05)
    assert torch.equal(by_default.log_p, explicit.log_p)
    # negative control: without a training eps the default is 1e-5, another start
    other = ode_likelihood(GaussianScore(), SDE, x, divergence="exact")
    assert not torch.allclose(other.log_p, explicit.log_p, rtol=1e-9, atol=0)


def test_the_likelihood_starts_below_1e_5_for_a_model_trained_from_there():
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    by_default = ode_likelihood(GaussianScore(1e-6), SDE, x, divergence="exact")
    explicit = ode_likelihood(GaussianScore(), SDE, x, divergence="exact", eps=1e-6)
    assert torch.equal(by_default.log_p, explicit.log_p)
    # negative control: from the 1e-5 of a score function without a training eps, another start
    other = ode_likelihood(GaussianScore(), SDE, x, divergence="exact")
    assert not torch.equal(other.log_p, by_default.log_p)

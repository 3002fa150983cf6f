"""EDM's training recipe (Karras et al. 2022) on the book's SDEs: the preconditioned denoiser net
(`ScoreNet(output='denoiser')`), the 'edm' weighting of `dsm_loss` and its log-normal noise levels
(`sample_time(log_normal=...)`), and the training CLI that combines them."""
import json
import math

import pytest
import torch
from helpers import assert_close

from sdelib import pretrained as pretrained_module
from sdelib import train as train_module
from sdelib.data import GaussianMixture
from sdelib.losses import EDM_LOG_NORMAL, dsm_loss, edm_log_normal, sample_time
from sdelib.nets import ScoreNet, net_from_config
from sdelib.pretrained import load_pretrained
from sdelib.sde import SubVPSDE, VESDE, VPSDE

F64 = torch.float64
SDES = {"ve": VESDE(25.0), "vp": VPSDE(), "subvp": SubVPSDE()}


def tiny_denoiser(sde, sigma_data=0.5):
    torch.manual_seed(0)
    return ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=16, output="denoiser",
                    sigma_data=sigma_data).double()


@pytest.mark.parametrize("name", sorted(SDES))
def test_a_denoiser_net_with_a_silent_unet_is_the_score_of_gaussian_data(name):
    """With the U-Net's output h = 0 the denoiser is D = c_skip x~, the exact posterior mean of
    data x_0 ~ N(0, sigma_data^2 I); the net must then return that data's exact score,
    -x / (m^2 sigma_data^2 + std^2). Negative control: a score net with h = 0 returns 0."""
    sde, sigma_data = SDES[name], 0.3
    net = tiny_denoiser(sde, sigma_data)
    plain = ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=16).double()
    for model in (net, plain):
        with torch.no_grad():
            model.tconv1.weight.zero_()
            model.tconv1.bias.zero_()
    x = torch.randn(3, 1, 28, 28, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.02, 0.3, 0.9], dtype=F64)
    m = sde.mean_coeff(t)[:, None, None, None]
    std = sde.marginal_std(t)[:, None, None, None]
    exact = -x / (m ** 2 * sigma_data ** 2 + std ** 2)
    assert_close(net(x, t), exact, rtol=1e-12, atol=0)
    assert (plain(x, t) - exact).abs().max() > 0.1 * exact.abs().max()


def test_a_denoiser_net_keeps_its_output_and_sigma_data_in_its_config():
    net = tiny_denoiser(VESDE(25.0), sigma_data=0.3)
    config = net.config()
    assert config["output"] == "denoiser" and config["sigma_data"] == 0.3
    rebuilt = net_from_config(config, VESDE(25.0).config()).double()
    rebuilt.load_state_dict(net.state_dict())
    x, t = torch.rand(2, 1, 28, 28, dtype=F64), torch.tensor([0.1, 0.6], dtype=F64)
    assert torch.equal(rebuilt(x, t), net(x, t))
    assert "sigma_data" not in ScoreNet(VESDE(25.0)).config()   # score nets' configs unchanged


@pytest.mark.parametrize("name", sorted(SDES))
def test_edm_weighting_is_edms_denoiser_loss(name):
    """Per sample, dsm_loss(weighting='edm') = lambda(sigma~) |D - x_0|^2 in x~ = x / m, with
    lambda = (sigma~^2 + sigma_data^2) / (sigma~ sigma_data)^2 and D = (x + std^2 s) / m the
    denoiser of the score s (Karras et al. 2022, eq. 8). Negative control: another sigma_data."""
    sde, sigma_data = SDES[name], 0.4
    gen = torch.Generator().manual_seed(2)
    data = GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [[0.2, 0.2], [0.3, 0.1]])
    x0 = data.sample(64, generator=gen)
    t = torch.rand(64, generator=gen, dtype=F64) * 0.95 + 0.02
    z = torch.randn(64, 2, generator=gen, dtype=F64)
    score_fn = data.score_fn(sde, scale=0.7)                  # any score: the identity is per sample
    loss = dsm_loss(score_fn, sde, x0, t=t, z=z, weighting="edm", sigma_data=sigma_data,
                    reduce=False)
    m, std = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
    x_t = m * x0 + std * z
    denoised = (x_t + std ** 2 * score_fn(x_t, t)) / m
    sigma = (std / m)[:, 0]

    def edm(sigma_data):
        weight = (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2
        return weight * (denoised - x0).pow(2).sum(1)

    assert_close(loss, edm(sigma_data), rtol=1e-10, atol=0)
    assert not torch.allclose(loss, edm(0.5), rtol=1e-3)


def test_log_normal_times_have_normal_log_noise_levels():
    """ln sigma~(t) of 20,000 draws: mean P_mean and std P_std within 4 standard errors (the
    range clamps a negligible tail here); negative control: the likelihood weighting's
    importance-sampled times (ln sigma~^2 uniform) fail the mean."""
    sde, n = VESDE(25.0), 20_000
    p_mean, p_std = edm_log_normal(0.25)
    assert (p_mean, p_std) == (pytest.approx(-1.2 + math.log(0.5)), 1.2)
    assert edm_log_normal() == EDM_LOG_NORMAL
    generator = torch.Generator().manual_seed(3)
    t = sample_time(sde, n, eps=1e-5, log_normal=(p_mean, p_std), generator=generator,
                    dtype=F64)
    assert bool(((t >= 1e-5) & (t <= sde.T)).all())
    log_sigma = sde.scaled_std(t).log()
    assert abs(log_sigma.mean() - p_mean) < 4 * p_std / math.sqrt(n)
    assert abs(log_sigma.std() - p_std) < 4 * p_std / math.sqrt(2 * n)
    other = sample_time(sde, n, eps=1e-5, importance_sampling=True, generator=generator,
                        dtype=F64)
    assert abs(sde.scaled_std(other).log().mean() - p_mean) > 4 * p_std / math.sqrt(n)


def test_log_normal_draws_outside_the_range_are_clamped_to_its_ends():
    sde = VPSDE()
    ends = sde.scaled_std(torch.tensor([1e-3, sde.T], dtype=F64))
    t = sample_time(sde, 2000, eps=1e-3, log_normal=(0.0, 10.0), dtype=F64,
                    generator=torch.Generator().manual_seed(4))
    sigma = sde.scaled_std(t)
    assert_close(sigma.min(), ends[0], rtol=1e-9, atol=0)
    assert_close(sigma.max(), ends[1], rtol=1e-9, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(log_normal=(0.0, 1.0), importance_sampling=True), "not both"),
    (dict(log_normal=(0.0,)), "pair"),
    (dict(log_normal=(0.0, 0.0)), "P_std"),
])
def test_sample_time_refuses_bad_log_normal_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_time(VESDE(25.0), 4, **kwargs)


def test_training_refuses_a_denoiser_whose_sigma_data_differs_from_the_loss():
    sde = VESDE(25.0)
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sigma_data"):
        train_module.train(tiny_denoiser(sde, 0.3).float(), sde, images, batch_size=16,
                           weighting="edm", sigma_data=0.5, device="cpu", progress=False)


def test_cli_trains_and_exports_an_edm_denoiser(tmp_path, monkeypatch):
    import sdelib.data

    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sdelib.data, "load_mnist",
                        lambda split: (images, torch.zeros(32, dtype=torch.long)))
    monkeypatch.setattr(train_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    monkeypatch.setattr(pretrained_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    train_module.main(["--epochs", "1", "--batch-size", "16", "--warmup-steps", "1",
                       "--device", "cpu", "--weighting", "edm", "--output", "denoiser",
                       "--sigma-data", "0.3", "--noise-input", "log_sigma",
                       "--out", str(tmp_path / "run.pt"), "--export", "tiny-edm"])
    log = json.loads((tmp_path / "shipped" / "tiny-edm.json").read_text())
    assert log["settings"]["weighting"] == "edm" and log["settings"]["sigma_data"] == 0.3
    assert all(math.isfinite(entry["loss"]) for entry in log["history"])
    model, _ = load_pretrained("tiny-edm")
    assert model.output == "denoiser" and model.sigma_data == 0.3

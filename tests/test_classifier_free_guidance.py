"""Classifier-free guidance on a 2-D Gaussian mixture whose classes are its components, where the
conditional score grad log p_t(x | y) (component y, diffused) and the unconditional one (the
mixture) are exact; and the class-conditional ScoreNet and its training with label dropout.

Tolerances: exact scores are compared at float64 round-off (1e-10 relative); the label-dropout
fraction at 4.5 binomial standard errors; each check has a negative control that must fail it."""
import math

import numpy as np
import pytest
import torch

from sdelib.checks import check_labels
from sdelib.controllable import classifier_free_guided_score, classifier_guided_score
from sdelib.data import GaussianMixture
from sdelib.nets import ScoreNet, net_from_config
from sdelib.sde import VESDE, VPSDE
from sdelib.train import train

MIXTURE = GaussianMixture([[-2.0, -1.0], [2.0, 1.5], [0.0, 2.5]],
                          [[[1.0, 0.6], [0.6, 0.8]], [[0.5, -0.2], [-0.2, 0.4]],
                           [[0.3, 0.0], [0.0, 0.3]]], [0.3, 0.5, 0.2])
NULL = 3
SDE = VPSDE()


def exact_conditional_score(x, t, labels):
    """grad log p_t(x | y): component y's diffused score; the mixture's for the null label."""
    out = torch.empty_like(x)
    for k in range(NULL + 1):
        rows = labels == k
        if rows.any():
            density = MIXTURE if k == NULL else GaussianMixture(MIXTURE.means[k:k + 1],
                                                                MIXTURE.covs[k:k + 1])
            out[rows] = density.score(x[rows], SDE, t[rows] if t.numel() > 1 else t)
    return out


def points(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, 2, dtype=torch.float64, generator=generator)
    t = torch.rand(n, dtype=torch.float64, generator=generator) * 0.9 + 0.05
    return x, t


def tilted_score(x, t, label, strength):
    """grad_x [log p_t(x) + w log p_t(y | x)] by autograd of the exact mixture: an independent
    computation of the guided score."""
    x = x.detach().requires_grad_(True)
    log_joint = MIXTURE.log_prob(x, SDE, t)
    log_posterior = torch.log_softmax(MIXTURE.class_logits(x, SDE, t), dim=1)[:, label]
    return torch.autograd.grad((log_joint + strength * log_posterior).sum(), x)[0]


@pytest.mark.parametrize("strength", [0.0, 1.0, 2.5])
def test_guided_score_is_the_score_of_p_t_times_posterior_to_the_power_w(strength):
    x, t = points()
    guided = classifier_free_guided_score(exact_conditional_score, 1, strength,
                                          num_classes=3)(x, t)
    expected = tilted_score(x, t, 1, strength)
    assert torch.allclose(guided, expected, rtol=1e-10, atol=1e-10)


def test_the_other_papers_convention_is_a_different_score():
    # Negative control: Ho & Salimans' w' = w - 1; passing w' as the strength misses.
    x, t = points()
    guided = classifier_free_guided_score(exact_conditional_score, 1, 2.5 - 1, num_classes=3)(x, t)
    assert (guided - tilted_score(x, t, 1, 2.5)).abs().max() > 1e-2


def test_classifier_free_and_classifier_guidance_agree_for_exact_models():
    # One strength convention: with the exact classifier p_t(y | x) both give the same score.
    x, t = points()
    free = classifier_free_guided_score(exact_conditional_score, 2, 3.0, num_classes=3)(x, t)
    with_classifier = classifier_guided_score(MIXTURE.score_fn(SDE),
                                              lambda x, t: MIXTURE.class_logits(x, SDE, t), 2, 3.0,
                                              num_classes=3)(x, t)
    assert torch.allclose(free, with_classifier, rtol=1e-10, atol=1e-10)


def test_one_call_of_the_net_per_guided_evaluation():
    calls = []

    def recording(x, t, labels):
        calls.append(labels.tolist())
        return exact_conditional_score(x, t, labels)

    x, t = points(n=4)
    classifier_free_guided_score(recording, 0, 2.0, num_classes=3)(x, t)
    assert calls == [[0, 0, 0, 0, NULL, NULL, NULL, NULL]]


@pytest.mark.parametrize("label, message", [(NULL, "null label"), (5, r"0\.\.2"),
                                            (-1, r"0\.\.2"), (0.5, "integer")])
def test_guidance_refuses_labels_that_are_not_classes(label, message):
    with pytest.raises(ValueError, match=message):
        classifier_free_guided_score(exact_conditional_score, label, 1.0, num_classes=3)


def test_guidance_refuses_a_negative_strength():
    with pytest.raises(ValueError, match="strength"):
        classifier_free_guided_score(exact_conditional_score, 0, -0.5, num_classes=3)


# --- the one label check every caller uses -------------------------------------------------------
def test_one_label_is_repeated_and_a_list_is_taken_as_is():
    assert check_labels("labels", 3, 10, count=4).tolist() == [3, 3, 3, 3]
    assert check_labels("labels", [1, 2], 10, count=2).dtype == torch.int64
    assert check_labels("labels", np.array([0, 9]), 10).tolist() == [0, 9]


def test_the_null_label_is_accepted_only_where_allowed():
    assert check_labels("labels", [10], 10, null_label=10, null_allowed=True).tolist() == [10]
    with pytest.raises(ValueError, match="null label"):
        check_labels("labels", [10], 10, null_label=10)
    with pytest.raises(ValueError, match=r"0\.\.9, got \{10\}"):
        check_labels("labels", [10], 10)


# --- the class-conditional ScoreNet ---------------------------------------------------------------
def small_net(num_classes=10, seed=0):
    torch.manual_seed(seed)
    return ScoreNet(VESDE(25.0), channels=(32, 32, 32, 32), embed_dim=32, num_classes=num_classes)


def test_conditioning_leaves_the_unconditional_layers_initialised_as_before():
    unconditional, conditional = small_net(0), small_net(10)
    shared = conditional.state_dict()
    for name, value in unconditional.state_dict().items():
        assert torch.equal(value, shared[name]), name
    assert set(shared) - set(unconditional.state_dict()) == {"label_embed.weight"}


def test_no_label_means_the_null_label_and_classes_change_the_output():
    net = small_net().eval()
    with torch.no_grad():
        torch.nn.init.normal_(net.label_embed.weight, std=1.0)
        x, t = torch.randn(3, 1, 28, 28), torch.full((3,), 0.5)
        assert torch.equal(net(x, t), net(x, t, torch.full((3,), net.null_label)))
        assert (net(x, t, torch.tensor([1, 1, 1])) - net(x, t)).abs().max() > 1e-3


def test_a_conditional_net_rebuilds_from_its_config():
    net = small_net()
    rebuilt = net_from_config(net.config(), net.sde.config())
    assert rebuilt.num_classes == 10 and rebuilt.config() == net.config()
    assert "num_classes" not in small_net(0).config()     # older checkpoints keep their config


@pytest.mark.parametrize("label, message", [(torch.tensor([11]), r"0\.\.9"),
                                            (torch.tensor([0, 1]), "2 labels for 3"),
                                            (torch.tensor([0.0]), "integer")])
def test_the_net_refuses_bad_labels(label, message):
    with pytest.raises(ValueError, match=message):
        small_net()(torch.randn(3, 1, 28, 28), torch.full((3,), 0.5), label)


def test_an_unconditional_net_refuses_a_label():
    with pytest.raises(ValueError, match="not class-conditional"):
        small_net(0)(torch.randn(2, 1, 28, 28), torch.full((2,), 0.5), torch.tensor([1, 2]))


# --- training with label dropout ------------------------------------------------------------------
class RecordingNet(torch.nn.Module):
    """A tiny class-conditional score model that records the labels it is trained with."""

    def __init__(self):
        super().__init__()
        self.num_classes = self.null_label = 10
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x, t, label=None):
        self.seen.append(label.clone())
        return self.weight * x

    def config(self):
        return {"name": "RecordingNet"}


def trained_labels(label_dropout, steps=40, batch=64):
    images = torch.rand(batch * 2, 1, 4, 4)
    labels = torch.arange(batch * 2) % 10
    net = RecordingNet()
    train(net, VESDE(25.0), images, labels=labels, label_dropout=label_dropout, epochs=steps // 2,
          batch_size=batch, device="cpu", progress=False, warmup_steps=1)
    return torch.cat(net.seen)


@pytest.mark.parametrize("label_dropout", [0.0, 0.3, 1.0])
def test_labels_are_dropped_to_the_null_label_at_the_given_rate(label_dropout):
    seen = trained_labels(label_dropout)
    n = seen.numel()
    dropped = (seen == 10).float().mean().item()
    bound = 4.5 * math.sqrt(label_dropout * (1 - label_dropout) / n)
    assert abs(dropped - label_dropout) <= bound
    assert bool((seen[seen != 10] < 10).all())


def test_a_wrong_dropout_rate_fails_the_same_check():
    seen = trained_labels(0.3)
    n = seen.numel()
    assert abs((seen == 10).float().mean().item() - 0.15) > 4.5 * math.sqrt(0.15 * 0.85 / n)


def test_training_a_conditional_net_needs_labels():
    with pytest.raises(ValueError, match="needs labels"):
        train(RecordingNet(), VESDE(25.0), torch.rand(8, 1, 4, 4), epochs=1, batch_size=4,
              device="cpu", progress=False)


def test_training_an_unconditional_net_refuses_labels():
    net = ScoreNet(VESDE(25.0), channels=(32, 32, 32, 32), embed_dim=32)
    with pytest.raises(ValueError, match="not class-conditional"):
        train(net, VESDE(25.0), torch.rand(8, 1, 28, 28), labels=torch.zeros(8, dtype=torch.long),
              epochs=1, batch_size=4, device="cpu", progress=False)


@pytest.mark.parametrize("labels, message", [(torch.zeros(7, dtype=torch.long), "7 labels for 8"),
                                             (torch.full((8,), 10), r"0\.\.9"),
                                             (torch.zeros(8), "integer")])
def test_training_refuses_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        train(RecordingNet(), VESDE(25.0), torch.rand(8, 1, 4, 4), labels=labels, epochs=1,
              batch_size=4, device="cpu", progress=False)


# --- what guidance with w > 1 samples -------------------------------------------------------------
LINE = GaussianMixture([[-2.0], [2.0]], [[[0.25]], [[1.0]]], [0.5, 0.5])
VE = VESDE(25.0)


def diffused_tilted_score(x, t, label, strength):
    """grad log of [p_0(x0) p_0(y | x0)^w] convolved with the VE kernel N(0, std(t)^2), by
    quadrature on a fine grid (the score of the distribution guided sampling would need)."""
    grid = torch.linspace(-12, 12, 48_001, dtype=torch.float64)
    log_p0 = LINE.log_prob(grid[:, None])
    log_post = torch.log_softmax(LINE.class_logits(grid[:, None]), dim=1)[:, label]
    std = VE.marginal_std(torch.tensor([t], dtype=torch.float64)).item()
    log_w = (log_p0 + strength * log_post)[None, :] - 0.5 * ((x[:, None] - grid[None, :]) / std) ** 2
    weights = torch.softmax(log_w, dim=1)
    return (weights * (grid[None, :] - x[:, None])).sum(1) / std ** 2


def line_guided_score(x, t, strength):
    def conditional(x, t, labels):
        out = LINE.score(x, VE, t)
        rows = labels == 1
        component = GaussianMixture(LINE.means[1:], LINE.covs[1:])
        out[rows] = component.score(x[rows], VE, t[rows])
        return out
    tt = torch.full((x.shape[0],), t, dtype=torch.float64)
    return classifier_free_guided_score(conditional, 1, strength, num_classes=2)(x[:, None], tt)[:, 0]


def test_w_1_guides_towards_the_diffused_conditional():
    x = torch.linspace(-4, 4, 17, dtype=torch.float64)
    for t in (0.05, 0.2):
        guided, target = line_guided_score(x, t, 1.0), diffused_tilted_score(x, t, 1, 1.0)
        assert (guided - target).abs().max() < 1e-6      # quadrature error of the 5e-4 grid


def test_w_above_1_is_not_the_score_of_the_diffused_tilted_density():
    x = torch.linspace(-4, 4, 17, dtype=torch.float64)
    guided, target = line_guided_score(x, 0.05, 3.0), diffused_tilted_score(x, 0.05, 1, 3.0)
    assert (guided - target).abs().max() > 1e-2

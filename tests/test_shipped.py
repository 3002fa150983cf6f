"""The models shipped inside sdelib: they load, match their sha256, and are as good as their logs say.

These tests read real MNIST (fetched by `sdelib.data` on a fresh machine, as the book does) and run
the shipped nets on a few hundred test images on the CPU (a few seconds)."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdelib.data import load_mnist
from sdelib.metrics import (class_balance, classifier_accuracy, classifier_features, dsm_test_loss,
                            frechet_distance,
                            mean_and_standard_error)
from sdelib.losses import dsm_loss
from sdelib.nets import ScoreNet
from sdelib.pretrained import CHECKPOINT_DIR, load_pretrained
from sdelib.provenance import sha256 as sha256_of

K = 4.0          # standard errors


@pytest.fixture(scope="module")
def test_images():
    images, labels = load_mnist("test")
    return images, labels


def test_shipped_score_model_is_the_logged_file_and_meets_the_loss_bound(test_images):
    log = json.loads((CHECKPOINT_DIR / "mnist-ve.json").read_text())
    assert sha256_of(CHECKPOINT_DIR / "mnist-ve.pt") == log["sha256"]
    assert log["steps"] == log["settings"]["epochs"] * (log["settings"]["dataset_size"] // log["settings"]["batch_size"])
    assert len(log["history"]) == log["settings"]["epochs"] and log["machine"] and log["wall_seconds"] > 0
    model, sde = load_pretrained("mnist-ve")
    assert sde.config() == {"name": "ve", "sigma": 25.0}
    images = test_images[0][:256]
    with torch.no_grad():
        loss = dsm_test_loss(model, sde, images, seed=0)
    # The bound is 18.0 on 2,048 images (the shipped log: see the note); on these 256 the
    # estimate must be consistent with it at K standard errors.
    assert loss.mean < 18.0 + K * loss.standard_error, loss
    # Negative controls on the same t and z as dsm_test_loss (seed 0: t for every image, then z):
    # an untrained net and the model's score scaled by 0.9 cannot meet the bound, and each is
    # worse than the model by more than K standard errors of the paired difference.
    generator = torch.Generator().manual_seed(0)
    eps = log["settings"]["eps"]                             # the times it was trained on
    t = torch.rand(256, generator=generator) * (1 - eps) + eps
    z = torch.randn(images.shape, generator=generator)
    torch.manual_seed(0)
    untrained = ScoreNet(sde).eval()
    with torch.no_grad():
        model_losses = dsm_loss(model, sde, images, t=t, z=z, reduce=False)
        assert model_losses.mean().item() == pytest.approx(loss.mean, rel=1e-5)     # the same noise
        for broken in (untrained, lambda x, t_: 0.9 * model(x, t_)):
            broken_losses = dsm_loss(broken, sde, images, t=t, z=z, reduce=False)
            assert broken_losses.mean().item() > 18.0 + K * loss.standard_error     # fails the bound
            excess = mean_and_standard_error(broken_losses - model_losses)
            assert excess.mean > K * excess.standard_error, excess


def blur(images, std=1.5):
    """A Gaussian blur of `std` pixels (9x9 kernel): digits still legible, strokes soft and wide.
    (At std 1 the distance to the test set is ~200, only 7x the real-vs-real floor of ~29 that
    5,000 + 5,000 samples of 128 features leave; at 1.5 it is ~460.)"""
    grid = torch.arange(9.0) - 4
    kernel = torch.exp(-grid ** 2 / (2 * std ** 2))
    kernel = (kernel[:, None] * kernel[None, :]) / kernel.sum() ** 2
    return F.conv2d(images, kernel[None, None], padding=4).clamp(0, 1)


def test_shipped_classifier_is_accurate_and_its_frechet_distance_orders_image_quality(test_images):
    log = json.loads((CHECKPOINT_DIR / "mnist-classifier.json").read_text())
    assert sha256_of(CHECKPOINT_DIR / "mnist-classifier.pt") == log["sha256"] and log["test_accuracy"] >= 0.99
    classifier, sde = load_pretrained("mnist-classifier")
    images, labels = test_images
    assert sde is None
    accuracy = classifier_accuracy(classifier, images[:2000], labels[:2000])
    # >= 99 % on all 10k (the log); on these 2,000 within K SE of 0.99 (SE ~ 0.0022).
    assert accuracy > 0.99 - K * math.sqrt(0.99 * 0.01 / 2000), accuracy
    real = classifier_features(classifier, images)
    first, second = real[:5000], real[5000:]
    blurred = classifier_features(classifier, blur(images[5000:]))
    noise = classifier_features(classifier, torch.rand(5000, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    real_vs_real = frechet_distance(first, second)
    real_vs_blurred = frechet_distance(first, blurred)
    real_vs_noise = frechet_distance(first, noise)
    assert real_vs_real < 0.1 * real_vs_blurred, (real_vs_real, real_vs_blurred)
    # measured: real-vs-real ~29, blurred ~460, uniform noise ~1870
    assert real_vs_noise > 3 * real_vs_blurred, (real_vs_noise, real_vs_blurred)
    balance = class_balance(classifier, images)
    true_balance = torch.bincount(labels, minlength=10).double() / len(labels)
    assert (balance - true_balance).abs().max() < 0.005


def _measured_models():
    """The shipped score models with an entry in sdelib/results/models.json."""
    from sdelib.provenance import RESULTS_DIR
    path = RESULTS_DIR / "models.json"
    return json.loads(path.read_text()) if path.exists() else {}


_MODEL_SCORES_SPEC = importlib.util.spec_from_file_location(
    "model_scores", Path(__file__).parents[1] / "benchmarks" / "model_scores.py")
model_scores = importlib.util.module_from_spec(_MODEL_SCORES_SPEC)
_MODEL_SCORES_SPEC.loader.exec_module(model_scores)


@pytest.mark.parametrize("name", sorted(_measured_models()))
def test_logged_bits_per_dim_are_recomputed_with_the_logged_seed(name, test_images):
    """The logged check images' bits/dim, recomputed from the logged seed (the dequantisation and
    probes of all n images drawn first, as the benchmark did) in float64 at a tight tolerance, where
    neither round-off nor the adaptive solver's step choice moves them by more than CHECK_BOUND on
    any machine (see benchmarks/model_scores.py)."""
    from sdelib.likelihood import dequantize, make_probe
    entry = _measured_models()[name]
    log = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
    assert entry["sha256"] == log["sha256"] == sha256_of(CHECKPOINT_DIR / f"{name}.pt")
    likelihood = entry["likelihood"]
    check = likelihood["check"]
    assert {key: check[key] for key in model_scores.CHECK} == model_scores.CHECK
    model, sde = load_pretrained(name)
    model.requires_grad_(False)
    # the ODE starts where the model's training did (its eps: 1e-5 unless its log says more)
    assert likelihood["eps"] == log["settings"]["eps"]
    logged = torch.tensor(check["bpd"], dtype=torch.float64)

    def bpd_with_seed(seed):
        generator = torch.Generator().manual_seed(seed)
        x = dequantize(test_images[0][:likelihood["n"]], generator)
        probe = make_probe(x, "gaussian", generator)
        return torch.tensor(model_scores.check_bpd(model, sde, x, probe, likelihood["eps"]))

    bound = model_scores.CHECK_BOUND
    assert (bpd_with_seed(likelihood["seed"]) - logged).abs().max() < bound
    # negative control: another seed's dequantisation and probes (~0.05 bits/dim per image)
    assert (bpd_with_seed(likelihood["seed"] + 1) - logged).abs().max() > bound
    estimate = mean_and_standard_error(torch.tensor(likelihood["bpd"], dtype=torch.float64))
    assert estimate.mean == pytest.approx(likelihood["bpd_mean"], rel=1e-6)


def _shipped_score_models():
    """Every shipped ScoreNet other than the tutorial's mnist-ve (tested above)."""
    from sdelib.pretrained import SHIPPED
    return sorted(name for name in SHIPPED
                  if name.startswith(("mnist-ve", "mnist-vp", "mnist-subvp", "mnist-rf"))
                  and name != "mnist-ve")


@pytest.mark.parametrize("name", _shipped_score_models())
def test_shipped_score_model_is_its_logged_complete_run_and_beats_broken_nets(name, test_images):
    """The file is the one its log describes, trained to the end of its schedule, and its DSM
    loss on 256 test images (the tutorial's weighting, fixed t and z) beats an untrained net and
    the model's own score scaled by 0.9 by more than K standard errors of the paired difference."""
    log = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
    assert sha256_of(CHECKPOINT_DIR / f"{name}.pt") == log["sha256"]
    settings = log["settings"]
    assert log["steps"] == settings["epochs"] * (settings["dataset_size"] // settings["batch_size"])
    assert len(log["history"]) == settings["epochs"] and log["wall_seconds"] > 0
    model, sde = load_pretrained(name)
    images, labels = test_images[0][:256], test_images[1][:256]
    generator = torch.Generator().manual_seed(0)
    eps = settings["eps"]                                # the times it was trained on
    t = torch.rand(256, generator=generator) * (sde.T - eps) + eps
    z = torch.randn(images.shape, generator=generator)
    conditional = getattr(model, "num_classes", 0) > 0
    score = (lambda x, t_: model(x, t_, labels)) if conditional else model
    torch.manual_seed(0)
    untrained = ScoreNet(sde, **{k: v for k, v in log["net"].items() if k != "name"}).eval()
    with torch.no_grad():
        model_losses = dsm_loss(score, sde, images, t=t, z=z, reduce=False)
        broken = [lambda x, t_: 0.9 * score(x, t_)]
        broken.append((lambda x, t_: untrained(x, t_, labels)) if conditional else untrained)
        for net in broken:
            excess = mean_and_standard_error(dsm_loss(net, sde, images, t=t, z=z, reduce=False)
                                             - model_losses)
            assert excess.mean > K * excess.standard_error, (name, excess)


def test_the_class_conditional_model_uses_its_labels(test_images):
    """mnist-ve-cfg denoises better with the true label than with a wrong one (each digit's label
    shifted by one), and better than with the null label, by K paired standard errors; the
    unconditional score is the one for the null label."""
    model, sde = load_pretrained("mnist-ve-cfg")
    images, labels = test_images[0][:256], test_images[1][:256]
    generator = torch.Generator().manual_seed(1)
    # small and middle noise levels, where the label decides the most
    t = torch.rand(256, generator=generator) * 0.5 + 0.05
    z = torch.randn(images.shape, generator=generator)
    with torch.no_grad():
        def losses(label):
            return dsm_loss(lambda x, t_: model(x, t_, label), sde, images, t=t, z=z,
                            reduce=False)
        true = losses(labels)
        for other in ((labels + 1) % 10, torch.full_like(labels, model.null_label)):
            excess = mean_and_standard_error(losses(other) - true)
            assert excess.mean > K * excess.standard_error, excess
        assert torch.equal(model(images[:4], t[:4]), model(images[:4], t[:4],
                                                            torch.full((4,), 10)))

"""Measuring models honestly: every figure comes with its standard error.

- `mean_and_standard_error(values)`: the sample mean and s / sqrt(n).
- `dsm_test_loss`: the tutorial-weighted DSM loss of a model on held-out images, with t ~ U(eps, 1)
  and z drawn from a fixed seed, so two models (or two runs) see the same noise.
- `classifier_accuracy` and `class_balance`: how a classifier scores real or generated digits.
- `frechet_distance(features_a, features_b)`: the Fréchet distance between Gaussians fitted to two
  feature sets, |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2) (Heusel et al. 2017,
  eq. 6), with `bootstrap_standard_error`. With `classifier_features` of the MNIST classifier
  shipped in `sdelib` this is *not* Inception FID: Inception-v3 needs a download (the book must
  build offline) and was trained on photographs, not digits; the numbers are comparable with
  each other, not with published FIDs.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .checks import check_callable, check_generator, check_int
from .losses import dsm_loss
from .sde import SDE, normal_like

__all__ = ["Estimate", "mean_and_standard_error", "frechet_distance_from_moments",
           "frechet_distance", "bootstrap_standard_error", "classifier_features", "class_balance",
           "dsm_test_loss", "classifier_accuracy"]


class Estimate(NamedTuple):
    mean: float
    standard_error: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.standard_error:.3f} (n={self.n})"


def mean_and_standard_error(values) -> Estimate:
    """Sample mean and standard error s / sqrt(n) (s with Bessel's correction)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n < 2:
        raise ValueError(f"need at least 2 values for a standard error, got {n}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{int((~torch.isfinite(values)).sum())} of {n} values are not finite")
    return Estimate(values.mean().item(), values.std(unbiased=True).item() / math.sqrt(n), n)


def frechet_distance_from_moments(mu_a, cov_a, mu_b, cov_b) -> float:
    """|mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), in float64.

    The matrix square roots are taken by symmetric eigendecompositions (round-off negatives clamped
    to 0), so no complex parts appear as with a general sqrtm of C_a C_b."""
    mu_a, mu_b = (torch.as_tensor(m, dtype=torch.float64) for m in (mu_a, mu_b))
    cov_a, cov_b = (torch.as_tensor(c, dtype=torch.float64) for c in (cov_a, cov_b))
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root).item()


def _moments(features: torch.Tensor):
    features = torch.as_tensor(features, dtype=torch.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (n >= 2, d), got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{int((~torch.isfinite(features).all(dim=1)).sum())} feature rows are not finite")
    return features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets.

    Each set needs more samples than feature dimensions: n samples give a covariance of rank at
    most n - 1, singular for n <= d, and the distance is then dominated by that estimate."""
    moments = []
    for name, features in (("features_a", features_a), ("features_b", features_b)):
        moments += _moments(features)
        n, d = features.shape
        if n <= d:
            raise ValueError(f"{name} has {n} samples of dimension {d}: its covariance has rank "
                             f"at most {n - 1} < {d} (singular), so the Fréchet distance is not "
                             f"meaningful; use at least {d + 1} samples per set (in practice "
                             f"several times d)")
    if features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features_a and features_b must have the same dimension, got "
                         f"{features_a.shape[1]} and {features_b.shape[1]}")
    return frechet_distance_from_moments(*moments)


def bootstrap_standard_error(statistic, *samples: torch.Tensor, n_boot: int = 50,
                             generator: torch.Generator | None = None) -> float:
    """Standard deviation of `statistic(*resampled)` over `n_boot` bootstrap resamples, each sample
    (rows) resampled with replacement independently."""
    check_callable("statistic", statistic)
    n_boot = check_int("n_boot", n_boot, minimum=2)
    check_generator("generator", generator)
    if not samples:
        raise ValueError("bootstrap_standard_error needs at least one sample to resample")
    generator = generator or torch.Generator().manual_seed(0)
    values = []
    for _ in range(n_boot):
        resampled = [x[torch.randint(len(x), (len(x),), generator=generator)] for x in samples]
        values.append(statistic(*resampled))
    return float(torch.tensor(values, dtype=torch.float64).std())


@torch.no_grad()
def classifier_features(classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features (n, d) of `images` in [0, 1], on the classifier's device.

    Images outside [0, 1] (beyond 1e-3 of round-off) or not finite raise ValueError: a sampler's
    raw output must be clipped to [0, 1] first, as a saved image would be."""
    images = torch.as_tensor(images)
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"images must lie in [0, 1] (clip samples first), got [{images.min():.3g}, {images.max():.3g}]")
    device = next(classifier.parameters()).device
    return torch.cat([classifier.features(images[i:i + batch_size].to(device, torch.float32)).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def class_balance(classifier, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Fraction of `images` the classifier assigns to each of its 10 classes (sums to 1)."""
    device = next(classifier.parameters()).device
    labels = torch.cat([classifier(images[i:i + batch_size].to(device, torch.float32)).argmax(1).cpu()
                        for i in range(0, len(images), batch_size)])
    return torch.bincount(labels, minlength=10).double() / len(labels)


@torch.no_grad()
def dsm_test_loss(model, sde: SDE, images: torch.Tensor, *, batch_size: int = 256, seed: int = 0,
                  eps: float = 1e-5, weighting: str = "std2", device=None) -> Estimate:
    """Per-image DSM loss (tutorial weighting by default) averaged over `images`, mean ± SE.

    t and z are drawn image by image from one generator seeded with `seed`, so the noise does not
    depend on the batch size or the device."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    t_all = torch.rand(n, generator=generator, dtype=torch.float32) * (sde.T - eps) + eps
    z_all = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    losses = []
    for start in range(0, n, batch_size):
        part = slice(start, start + batch_size)
        losses.append(dsm_loss(model, sde, images[part].to(device), t=t_all[part].to(device),
                               z=z_all[part].to(device), weighting=weighting, reduce=False).cpu())
    return mean_and_standard_error(torch.cat(losses))


@torch.no_grad()
def classifier_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, t: float | None = None,
                        sde: SDE | None = None, seed: int = 0, batch_size: int = 1000) -> float:
    """Fraction of `images` whose arg-max class is the label (model in eval mode). For a
    noise-conditional model pass `t`; with `sde` too, the images are first perturbed to x_t
    (noise from `seed`), else they are fed as they are at time t."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        if t is None:
            logits = model(x)
        else:
            t_vec = torch.full((len(x),), float(t), device=device)
            if sde is not None:
                x = sde.perturb(x, t_vec, normal_like(x, generator))
            logits = model(x, t_vec)
        correct += (logits.argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(images)

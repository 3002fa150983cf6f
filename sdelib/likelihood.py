"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Appendix D.2).

Along the ODE dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t) (eq. 13), the instantaneous
change-of-variables formula (Chen et al. 2018) gives d log p_t(x(t)) / dt = -div f~(x(t), t), so

    log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt          (paper eq. (39)).

We integrate [x, delta_logp] from eps to T and replace p_T by the prior (for VE sigma = 25 this
approximation costs about |mu|^2 / (2 std(1)^2) nats on data of mean mu). The divergence
is exact (D backward passes: for toy data) or the Skilling–Hutchinson estimate E[e^T (df~/dx) e]
with one fixed Gaussian or Rademacher probe e per ODE solve (one backward pass per evaluation).

Bits per dimension: for images with 256 levels scaled to [0, 1] we evaluate the density of the
uniformly dequantised x = (255 x_int/255 + u) / 256, u ~ U(0, 1), which lives on [0, 1)^D. A density
p on [0, 1)^D corresponds to probabilities P(bin) ~ p(x) / 256^D of the 256^D integer bins, so

    bpd = -log2 P / D = -log p(x) / (D ln 2) + log2(256) = -log p(x) / (D ln 2) + 8.

The "+8" is that change of units, not a fudge factor; for data scaled to [-1, 1] (bins of width
2/256) it is 7.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .checks import (check_callable, check_choice, check_data, check_eps, check_floating_tensor,
                     check_generator, check_instance, check_positive_int, check_real,
                     check_tensor, checked_score_fn)
from .ode import check_solver, solve
from .sde import SDE, normal_like

__all__ = ["DIVERGENCES", "LikelihoodResult", "BpdResult", "exact_divergence",
           "hutchinson_divergence", "make_probe", "ode_likelihood", "dequantize", "bits_per_dim",
           "check_unit_images", "image_bpd", "DatasetBpd", "dataset_bpd", "within_band"]

DIVERGENCES = ("exact", "gaussian", "rademacher")


class LikelihoodResult(NamedTuple):
    log_p: torch.Tensor      # (batch,) log p_0(x) in nats
    z: torch.Tensor          # x(T): the data mapped to the prior by the probability-flow ODE
    nfe: int


def exact_divergence(fn, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x, t), sum_i d f_i / d x_i) by one backward pass per dimension (small D only)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x, t)
        flat_out, div = out.reshape(x.shape[0], -1), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in range(flat_out.shape[1]):
            grad = torch.autograd.grad(flat_out[:, i].sum(), x, retain_graph=True)[0]
            div = div + grad.reshape(x.shape[0], -1)[:, i]
    return out.detach(), div.detach()


def hutchinson_divergence(fn, x: torch.Tensor, t: torch.Tensor, probe: torch.Tensor):
    """(f(x, t), e^T (df/dx) e) for a probe e with E[e e^T] = I: an unbiased divergence estimate."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = fn(x, t)
        grad = torch.autograd.grad((out * probe).sum(), x)[0]
    return out.detach(), (grad * probe).reshape(x.shape[0], -1).sum(dim=1).detach()


def make_probe(x: torch.Tensor, kind: str, generator=None) -> torch.Tensor:
    if kind == "gaussian":
        return normal_like(x, generator)
    return torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1


def ode_likelihood(score_fn, sde: SDE, x: torch.Tensor, *, eps: float | None = None,
                   divergence: str = "gaussian", rtol: float = 1e-5, atol: float = 1e-5,
                   solver: str = "scipy", method: str | None = None, max_nfe: int = 20_000,
                   generator=None, prior_logp=None,
                   probe: torch.Tensor | None = None) -> LikelihoodResult:
    """log p_0(x) for a batch by the probability-flow ODE from eps to T (eq. (39)).

    The model's density of x_0 is that of x(eps) / m(eps), x(eps) ~ p_eps: the flow starts at
    m(eps) x and log p gains D ln m(eps), so a larger eps (a model trained only down to eps)
    still gives a density of the data, that of x_0 + sigma~(eps) z. eps defaults to the model's
    training eps (a shipped model carries it; an eps below it is refused: `checks.check_eps`),
    and to 1e-5 for a score function without one.

    divergence: 'exact', 'gaussian' or 'rademacher' (Hutchinson, one probe per sample drawn with
    `generator`); solver and method as in `samplers.probability_flow_ode` ('scipy': RK45 on one
    float64 vector, as the tutorial; 'torchdiffeq': dopri5, batched on x's device and dtype).
    `prior_logp(z)` defaults to sde.prior_logp; pass the exact log p_T to remove the prior
    approximation (tests do). `probe` fixes the Hutchinson probes
    (shape of x) instead of drawing them, so two solvers can be compared on identical estimates."""
    check_choice("divergence", divergence, DIVERGENCES)
    check_solver(solver, method)
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    eps = check_eps(eps, sde, score_fn, default=getattr(score_fn, "trained_eps", None) or 1e-5)
    score_fn = checked_score_fn(score_fn)
    check_data("x", x)
    rtol = check_real("rtol", rtol, low=0.0, low_open=True)
    atol = check_real("atol", atol, low=0.0, low_open=True)
    max_nfe = check_positive_int("max_nfe", max_nfe)
    check_generator("generator", generator)
    if probe is not None:
        check_tensor("probe", probe)
    drift = sde.reverse(score_fn, probability_flow=True).drift
    if divergence == "exact":
        probe = None
    elif probe is None:
        probe = make_probe(x, divergence, generator)
    elif probe.shape != x.shape:
        raise ValueError(f"probe has shape {tuple(probe.shape)}, expected {tuple(x.shape)}")
    shape, batch = x.shape, x.shape[0]

    def drift_and_divergence(x_t, t_vec):
        if probe is None:
            return exact_divergence(drift, x_t, t_vec)
        return hutchinson_divergence(drift, x_t, t_vec, probe)

    # The model's x_0 is its x(eps) / m(eps): the flow starts at m(eps) x, and the change of
    # variables adds D ln m(eps) (0 for VE, where m = 1; about -1e-6 nats for VP at eps = 1e-5).
    mean_coeff = float(sde.mean_coeff(torch.tensor(eps, dtype=torch.float64)))
    log_jacobian = x[0].numel() * math.log(mean_coeff)
    # scipy integrates in float64 anyway: keep the log-density there; torchdiffeq keeps x's dtype.
    logp_dtype = torch.float64 if solver == "scipy" else x.dtype
    state = (mean_coeff * x.detach(), torch.zeros(batch, device=x.device, dtype=logp_dtype))
    (z, delta_logp), nfe = solve(lambda s, t_vec: drift_and_divergence(s[0], t_vec), state, eps,
                                 sde.T, solver=solver, method=method, rtol=rtol, atol=atol,
                                 max_nfe=max_nfe, what="likelihood ODE")
    delta_logp = delta_logp.double()
    prior = (prior_logp or sde.prior_logp)(z).double()
    log_p = prior + delta_logp + log_jacobian
    if not bool(torch.isfinite(log_p).all()):
        raise FloatingPointError("ode_likelihood: log p is NaN or infinite (the prior_logp of "
                                 "x(T), or the integrated divergence, is not finite)")
    return LikelihoodResult(log_p, z, nfe)


def within_band(score_fn, sde: SDE, band: float = 4.0, low: float = 0.0, high: float = 1.0):
    """The score whose denoiser sees x_t only within `band` standard deviations of the data's range.

    Data in [low, high] perturbed to x_t = m(t) x_0 + std(t) z lies, pixel by pixel, in
    [m low - band std, m high + band std] but for at most erfc(band / sqrt 2) / 2 of the draws per
    pixel and side (3e-5 for band = 4). Outside that band a net has seen almost no input, and what
    it answers there is arbitrary: a pixel that the probability-flow ODE carries out of the band
    can be pushed further out by it, ever faster (the likelihood chapter traces such a runaway).
    Here each pixel of x_t is clipped into the band, x_c, before the net sees it, and the denoised
    image of x_t is taken as that of x_c. With m x^_0(x) = x + std^2 s(x), that is

        s_band(x, t) = s(x_c, t) + (x_c - x) / std(t)^2,

    equal to s inside the band; outside it, the pull of noise of size std back towards a bounded
    denoised value, the form of the exact score of data in [low, high] there (whose denoised image
    lies in the range whatever x is). The result is a score model of its own, Lipschitz where s is:
    `ode_likelihood` gives its density, a valid code length whatever the band. Keeps `trained_eps`
    and `sde`."""
    check_callable("score_fn", score_fn)
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    band = check_real("band", band, low=0.0, low_open=True)
    low, high = check_real("low", low), check_real("high", high)
    if not low < high:
        raise ValueError(f"the data's range must have low < high, got low={low:g}, high={high:g}")

    def banded(x, t, *args):
        shape = (-1,) + (1,) * (x.ndim - 1)
        mean_coeff = sde.mean_coeff(t).reshape(shape).to(x.dtype)
        std = sde.marginal_std(t).reshape(shape).to(x.dtype)
        x_c = torch.maximum(torch.minimum(x, mean_coeff * high + band * std),
                            mean_coeff * low - band * std)
        return score_fn(x_c, t, *args) + (x_c - x) / std ** 2

    for name in ("trained_eps", "sde"):
        if hasattr(score_fn, name):
            setattr(banded, name, getattr(score_fn, name))
    return banded


class BpdResult(NamedTuple):
    bpd: torch.Tensor        # (batch,) bits per dimension of each image
    z: torch.Tensor
    nfe: int


def dequantize(images: torch.Tensor, generator=None) -> torch.Tensor:
    """Uniform dequantisation of [0, 1] images with 256 levels: (255 x + u) / 256, u ~ U(0, 1)."""
    check_unit_images(images)
    u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (255.0 * images + u) / 256.0


def bits_per_dim(log_p: torch.Tensor, dims: int, offset: float = 8.0) -> torch.Tensor:
    """-log p / (D ln 2) + offset: offset 8 = log2(256) for [0, 1) data (see module docstring)."""
    return -log_p / (dims * math.log(2.0)) + offset


def check_unit_images(images: torch.Tensor) -> None:
    check_floating_tensor("images", images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (batch, channels, height, width), got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"images must be a non-empty batch, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"images must lie in [0, 1], got values in "
                         f"[{images.min().item():.3g}, {images.max().item():.3g}]")


def image_bpd(score_fn, sde: SDE, images: torch.Tensor, *, generator=None, **kwargs) -> BpdResult:
    """Bits/dim of [0, 1] images (dequantised with `generator`): returns (bpd per image, z, nfe)."""
    x = dequantize(images, generator)
    result = ode_likelihood(score_fn, sde, x, generator=generator, **kwargs)
    return BpdResult(bits_per_dim(result.log_p, x[0].numel()), result.z, result.nfe)


class DatasetBpd(NamedTuple):
    bpd: torch.Tensor        # (n,) bits per dimension of each image, on the CPU
    nfe: list                # evaluations of each batch's ODE solve
    seconds: float           # wall time of all batches


def dataset_bpd(score_fn, sde: SDE, x: torch.Tensor, probe: torch.Tensor | None = None, *,
                batch_size: int = 500, divergence: str = "gaussian", generator=None, device=None,
                dtype=torch.float32, progress: bool = True, desc: str = "bits/dim",
                **ode_kwargs) -> DatasetBpd:
    """Bits/dim of many dequantised images x (e.g. `dequantize(images, generator)`), batch by batch.

    One Hutchinson probe per image is drawn up front (with `generator`, unless `probe` is given),
    so the figures do not depend on the batch size and two solvers can be compared on identical
    estimates. Batches run on `device` (default: x's) in `dtype`; `ode_kwargs` go to
    `ode_likelihood` (solver, rtol, atol, eps, ...)."""
    import time

    from tqdm.auto import tqdm

    check_data("x", x)
    batch_size = check_positive_int("batch_size", batch_size)
    check_choice("divergence", divergence, DIVERGENCES)
    check_generator("generator", generator)
    if probe is None:
        probe = None if divergence == "exact" else make_probe(x, divergence, generator)
    device = torch.device(device) if device is not None else x.device
    out, nfe, start = [], [], time.perf_counter()
    for first in tqdm(range(0, len(x), batch_size), desc=desc, unit="batch", disable=not progress):
        part = slice(first, first + batch_size)
        result = ode_likelihood(score_fn, sde, x[part].to(device, dtype), divergence=divergence,
                                probe=None if probe is None else probe[part].to(device, dtype),
                                **ode_kwargs)
        out.append(bits_per_dim(result.log_p, x[0].numel()).cpu())
        nfe.append(result.nfe)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return DatasetBpd(torch.cat(out), nfe, time.perf_counter() - start)

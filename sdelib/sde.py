"""Forward SDEs of score-based generative modelling and their perturbation kernels.

Every process here is a linear SDE, per dimension,

    dx = f(x, t) dt + g(t) dw,        f(x, t) = A(t) x,

so the perturbation kernel p_0t(x_t | x_0) is Gaussian with mean m(t) = mean_coeff(t) * x_0 and
variance v(t) = marginal_std(t)^2, solutions of (Song et al. 2021, Appendix B; Särkkä & Solin 2019, ch. 6)

    m'(t) = A(t) m(t),       m(0) = x_0,
    v'(t) = 2 A(t) v(t) + g(t)^2,   v(0) = 0.

Song et al. (2021), "Score-based generative modeling through stochastic differential equations":
  VE    eq. (9)/(30):  dx = sqrt(d[sigma^2(t)]/dt) dw
  VP    eq. (11)/(32): dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw
  subVP eq. (12)/(33): dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw
  reverse-time SDE eq. (6), probability-flow ODE eq. (13).

The module depends on torch only. `t` is a tensor of shape (batch,) (or a float) and is broadcast
over any data shape, so the same code serves 2-D points and 1x28x28 images.
"""
from __future__ import annotations

import abc
import math

import torch

from .checks import check_finite_tensor, check_floating_tensor, check_generator, check_real

__all__ = [
    "SDE", "VESDE", "GeometricVESDE", "VPSDE", "SubVPSDE", "RectifiedFlowSDE", "ReverseSDE",
    "append_dims", "normal_like", "check_batch", "make_sde", "sde_from_config",
]


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a (batch,) tensor broadcasts over (batch, ...)."""
    if t.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor with {t.ndim} dims to {ndim} dims")
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def normal_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z ~ N(0, I) with the shape, device and dtype of x, drawn from `generator`."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _check_time(t: torch.Tensor, T: float) -> None:
    """t must lie in (0, T]: the kernels are degenerate at t = 0 (std 0, score undefined)."""
    if not torch.is_tensor(t):
        raise TypeError(f"t must be a tensor, got {type(t).__name__}")
    if t.numel() and not bool(((t > 0) & (t <= T + 1e-6)).all()):
        raise ValueError(
            f"t must lie in (0, {T}], got values in [{t.min().item():.3g}, {t.max().item():.3g}]")


def check_batch(x: torch.Tensor, t: torch.Tensor) -> None:
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension, got a scalar")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"t must have shape (batch,) = ({x.shape[0]},) to match x of shape {tuple(x.shape)}, "
            f"got {tuple(t.shape)}")


class SDE(abc.ABC):
    """A linear forward SDE dx = f(x, t) dt + g(t) dw on [0, T], T = 1.

    Subclasses give `drift_coeff` A(t) (f = A(t) x), `diffusion` g(t), `mean_coeff` m(t)/x_0 and
    `marginal_std` sqrt(v(t)); everything else (kernel, prior, reverse SDE) is derived here once.
    """

    T: float = 1.0
    name: str = "sde"

    # --- the process ---------------------------------------------------------------------------
    @abc.abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """A(t) in f(x, t) = A(t) x, shape like t."""

    @abc.abstractmethod
    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), shape like t (batch,)."""

    @abc.abstractmethod
    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """m(t) / x_0: the solution of m' = A(t) m with m(0) = 1."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(v(t)): the solution of v' = 2 A(t) v + g(t)^2 with v(0) = 0."""

    def scaled_std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma~(t) = std(t) / m(t): the noise level of x / m(t) = x_0 + sigma~(t) z (Karras et al.
        2022, eq. 4); increasing in t for every SDE here."""
        return self.marginal_std(t) / self.mean_coeff(t)

    @abc.abstractmethod
    def time_of_scaled_std(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma~), the inverse of `scaled_std`, in closed form (EDM's sigma^-1)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian prior p_T used to start sampling."""

    @abc.abstractmethod
    def config(self) -> dict:
        """Plain settings that rebuild this SDE with `sde_from_config` (stored in checkpoints)."""

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x, t) = A(t) x."""
        check_batch(x, t)
        return append_dims(self.drift_coeff(t), x.ndim) * x

    def marginal_prob(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean and std of the perturbation kernel p_0t(x_t | x_0) = N(m(t) x_0, v(t) I).

        Returns (mean with the shape of x0, std with the shape of t)."""
        check_floating_tensor("x0", x0)
        check_finite_tensor("x0", x0)
        t = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
        check_batch(x0, t)
        _check_time(t, self.T)
        return append_dims(self.mean_coeff(t), x0.ndim) * x0, self.marginal_std(t)

    def perturb(self, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A draw x_t = m(t) x_0 + std(t) z of the perturbation kernel, z ~ N(0, I) given (the
        reparameterisation used by the DSM loss, eq. (7), and the noisy classifiers)."""
        if z.shape != x0.shape:
            raise ValueError(f"z has shape {tuple(z.shape)}, expected {tuple(x0.shape)}")
        mean, std = self.marginal_prob(x0, t)
        return mean + append_dims(std, x0.ndim) * z

    def prior_sampling(self, shape, generator: torch.Generator | None = None,
                       device=None, dtype=torch.float32) -> torch.Tensor:
        """x_T ~ N(0, prior_std^2 I)."""
        check_generator("generator", generator)
        device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=device, dtype=dtype) * self.prior_std

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; 0, prior_std^2 I), summed over all but the batch dimension."""
        dims = z[0].numel()
        sum_sq = z.reshape(z.shape[0], -1).pow(2).sum(dim=1)
        return (-0.5 * dims * math.log(2 * math.pi * self.prior_std ** 2)
                - sum_sq / (2 * self.prior_std ** 2))

    def discretize(self, x: torch.Tensor, t: torch.Tensor, dt: float):
        """One forward step of size dt as x_{i+1} = x_i + f_i + G_i z (paper eq. (45); Euler–Maruyama
        by default).

        Used by the reverse-diffusion predictor (paper eq. (46)); VE and VP override it with the
        discretisations of SMLD and DDPM."""
        return self.drift(x, t) * dt, self.diffusion(t) * math.sqrt(dt)

    def langevin_alpha(self, t: torch.Tensor, dt: float) -> torch.Tensor:
        """alpha_i that scales the corrector's Langevin step (paper Alg. 5): 1 except for VP-type."""
        return torch.ones_like(t)

    def reverse(self, score_fn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (eq. 6), or the probability-flow ODE (eq. 13) if probability_flow."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class ReverseSDE:
    """dx = [f(x, t) - c g(t)^2 grad_x log p_t(x)] dt + g_rev(t) dw_bar, run from t = T to 0.

    c = 1 and g_rev = g for the reverse-time SDE (eq. 6); c = 1/2 and g_rev = 0 for the
    probability-flow ODE (eq. 13), whose marginals are the same p_t."""

    def __init__(self, sde: SDE, score_fn, probability_flow: bool = False):
        self.sde, self.score_fn, self.probability_flow = sde, score_fn, probability_flow

    def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        g2 = append_dims(self.sde.diffusion(t) ** 2, x.ndim)
        scale = 0.5 if self.probability_flow else 1.0
        return self.sde.drift(x, t) - scale * g2 * self.score_fn(x, t)

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g


class VESDE(SDE):
    """Variance exploding SDE of the tutorial: dx = sigma^t dw (g(t) = sigma^t).

    m(t) = 1 and, from v' = sigma^(2t), v(t) = (sigma^(2t) - 1) / (2 ln sigma)."""

    name = "ve"

    def __init__(self, sigma: float = 25.0):
        sigma = check_real("sigma", sigma, low=1.0, low_open=True)
        if 2 * self.T * math.log(sigma) > 700:             # sigma^(2T) overflows a float64
            raise ValueError(f"sigma must be below {math.exp(350 / self.T):.3g} (sigma^2 "
                             f"overflows a float64), got {sigma:g}")
        self.sigma = sigma

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma ** t

    def mean_coeff(self, t):
        return torch.ones_like(t)

    def marginal_std(self, t):
        """sqrt(expm1(2 t ln sigma) / (2 ln sigma)): written with expm1, since sigma^(2t) - 1 in
        float32 loses its digits to cancellation at small t (7 % at t = 2.5e-7)."""
        log_sigma = math.log(self.sigma)
        return torch.sqrt(torch.expm1(torch.as_tensor(2 * log_sigma * t)) / (2 * log_sigma))

    def time_of_scaled_std(self, sigma):
        """From v = (sigma^(2t) - 1) / (2 ln sigma): t = ln(1 + 2 ln(sigma) v) / (2 ln sigma)."""
        log_sigma = math.log(self.sigma)
        return torch.log1p(2 * log_sigma * torch.as_tensor(sigma) ** 2) / (2 * log_sigma)

    @property
    def prior_std(self):
        return math.sqrt((self.sigma ** (2 * self.T) - 1.0) / (2 * math.log(self.sigma)))

    def discretize(self, x, t, dt):
        """SMLD chain: x_i = x_{i-1} + sqrt(sigma_i^2 - sigma_{i-1}^2) z (paper eq. (8))."""
        var_now = self.marginal_std(t) ** 2
        var_prev = self.marginal_std(torch.clamp(t - dt, min=0.0)) ** 2
        return torch.zeros_like(x), torch.sqrt(var_now - var_prev)

    def config(self):
        return {"name": self.name, "sigma": self.sigma}


class GeometricVESDE(SDE):
    """Variance exploding SDE of the paper: s(t) = s_min (s_max / s_min)^t, dx = sqrt(d[s^2]/dt) dw.

    g(t) = s(t) sqrt(2 ln(s_max / s_min)); m(t) = 1; v(t) = s(t)^2 - s(0)^2 with s(0) = s_min: the
    SDE started from the clean x_0 at t = 0 (the paper's general VE kernel, Appendix B). For SMLD
    the paper sets the noise scale at t = 0 to 0 instead and has v(t) = s(t)^2 (Appendix C), the
    process started from x_0 + s_min z; the two conventions differ by s_min^2 in variance."""

    name = "ve-geometric"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        check_real("sigma_min", sigma_min, low=0.0, low_open=True)
        check_real("sigma_max", sigma_max, high=1e150)             # sigma_max^2 stays a float64
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma(self, t):
        """s(t) = s_min (s_max / s_min)^t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def drift_coeff(self, t):
        return torch.zeros_like(t)

    def diffusion(self, t):
        return self.sigma(t) * math.sqrt(2 * math.log(self.sigma_max / self.sigma_min))

    def mean_coeff(self, t):
        return torch.ones_like(t)

    def marginal_std(self, t):
        return torch.sqrt(self.sigma(t) ** 2 - self.sigma_min ** 2)

    def time_of_scaled_std(self, sigma):
        """From v = s_min^2 ((s_max/s_min)^(2t) - 1): t = ln(1 + v / s_min^2) / (2 ln(s_max/s_min))."""
        ratio = torch.as_tensor(sigma) / self.sigma_min
        return torch.log1p(ratio ** 2) / (2 * math.log(self.sigma_max / self.sigma_min))

    @property
    def prior_std(self):
        return math.sqrt(self.sigma_max ** 2 - self.sigma_min ** 2)

    def discretize(self, x, t, dt):
        """SMLD chain with sigma_i = s(t_i) (paper eq. (8))."""
        s_now, s_prev = self.sigma(t), self.sigma(torch.clamp(t - dt, min=0.0))
        return torch.zeros_like(x), torch.sqrt(s_now ** 2 - s_prev ** 2)

    def config(self):
        return {"name": self.name, "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class _BetaSchedule:
    """beta(t) = beta_min + t (beta_max - beta_min) and B(t) = int_0^t beta(s) ds."""

    def __init__(self, beta_min: float, beta_max: float):
        check_real("beta_min", beta_min, low=0.0)
        check_real("beta_max", beta_max)
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """B(t) = beta_min t + t^2 / 2 (beta_max - beta_min)."""
        return self.beta_min * t + 0.5 * t ** 2 * (self.beta_max - self.beta_min)

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def mean_coeff(self, t):
        """m(t) / x_0 = exp(-B(t) / 2)."""
        return torch.exp(-0.5 * self.integrated_beta(t))

    def time_of_integrated_beta(self, b):
        """The t >= 0 with B(t) = b: the positive root of (beta_max - beta_min) t^2 / 2 + beta_min t
        - b = 0, written t = 2 b / (beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) b)) so that
        it stays accurate for small b."""
        b = torch.as_tensor(b)
        root = torch.sqrt(self.beta_min ** 2 + 2 * (self.beta_max - self.beta_min) * b)
        return 2 * b / (self.beta_min + root)

    def langevin_alpha(self, t, dt):
        """alpha_i = 1 - beta_i with the DDPM betas beta_i = beta(t_i) dt (paper Alg. 5)."""
        return 1.0 - self.beta(t) * dt

    def config(self):
        return {"name": self.name, "beta_min": self.beta_min, "beta_max": self.beta_max}


class VPSDE(_BetaSchedule, SDE):
    """Variance preserving SDE: dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw.

    m(t) = x_0 exp(-B(t)/2) and, from v' = -beta v + beta, v(t) = 1 - exp(-B(t))."""

    name = "vp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        _BetaSchedule.__init__(self, beta_min, beta_max)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t))

    def marginal_std(self, t):
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def scaled_std(self, t):
        """sigma~^2 = v / m^2 = (1 - e^-B) e^B = e^B - 1."""
        return torch.sqrt(torch.expm1(self.integrated_beta(t)))

    def time_of_scaled_std(self, sigma):
        """B = ln(1 + sigma~^2), then t from B."""
        return self.time_of_integrated_beta(torch.log1p(torch.as_tensor(sigma) ** 2))

    @property
    def prior_std(self):
        return 1.0

    def discretize(self, x, t, dt):
        """DDPM chain: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, beta_i = beta(t_i) dt
        (paper eq. (10))."""
        beta_i = self.beta(t) * dt
        return (append_dims(torch.sqrt(1.0 - beta_i), x.ndim) - 1.0) * x, torch.sqrt(beta_i)


class SubVPSDE(_BetaSchedule, SDE):
    """Sub-VP SDE: dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw.

    m(t) = x_0 exp(-B(t)/2) and v(t) = (1 - exp(-B(t)))^2, never above the VP variance."""

    name = "subvp"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        _BetaSchedule.__init__(self, beta_min, beta_max)

    def diffusion(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t)))

    def marginal_std(self, t):
        return -torch.expm1(-self.integrated_beta(t))

    def scaled_std(self, t):
        """sigma~ = (1 - e^-B) e^(B/2) = 2 sinh(B / 2)."""
        return 2 * torch.sinh(0.5 * self.integrated_beta(t))

    def time_of_scaled_std(self, sigma):
        """B = 2 asinh(sigma~ / 2), then t from B."""
        return self.time_of_integrated_beta(2 * torch.asinh(torch.as_tensor(sigma) / 2))

    @property
    def prior_std(self):
        return 1.0


class RectifiedFlowSDE(SDE):
    """The rectified-flow ("optimal transport") Gaussian path x_t = (1 - t) x_0 + t z (Liu, Gong &
    Liu 2023; Lipman et al. 2023) as a linear SDE.

    A path x_t = alpha(t) x_0 + sigma(t) z is the marginal of dx = f dt + g dw with f = alpha'/alpha
    and g^2 = 2 sigma^2 d/dt ln(sigma / alpha) (the moment equations m' = A m, v' = 2 A v + g^2 of
    the module docstring, solved backwards). For alpha = 1 - t, sigma = t:

        A(t) = -1 / (1 - t),    g(t)^2 = 2 t / (1 - t),    m(t) = 1 - t,    std(t) = t,

    and sigma~(t) = t / (1 - t). At t = 1 the drift is infinite (alpha = 0), so the process is run
    on [0, T] with T < 1 (default 0.999: sigma~(T) = 999, and N(0, T^2 I) misses the prior's mean
    m(T) x_0 = 0.001 x_0)."""

    name = "rf"

    def __init__(self, T: float = 0.999):
        self.T = check_real("T", T, low=0.0, high=1.0, low_open=True, high_open=True)

    def drift_coeff(self, t):
        return -1.0 / (1.0 - t)

    def diffusion(self, t):
        return torch.sqrt(2 * t / (1.0 - t))

    def mean_coeff(self, t):
        return 1.0 - t

    def marginal_std(self, t):
        return torch.as_tensor(t) * 1.0

    def scaled_std(self, t):
        return t / (1.0 - t)

    def time_of_scaled_std(self, sigma):
        """t = sigma~ / (1 + sigma~)."""
        sigma = torch.as_tensor(sigma)
        return sigma / (1.0 + sigma)

    @property
    def prior_std(self):
        return self.T

    def config(self):
        return {"name": self.name, "T": self.T}


_SDES = {cls.name: cls for cls in (VESDE, GeometricVESDE, VPSDE, SubVPSDE, RectifiedFlowSDE)}


def make_sde(name: str, **params) -> SDE:
    """Build an SDE by its short name: 've' (sigma^t), 've-geometric', 'vp', 'subvp' or 'rf'."""
    if name not in _SDES:
        raise ValueError(f"unknown SDE name {name!r}; choose one of {sorted(_SDES)}")
    return _SDES[name](**params)


def sde_from_config(config: dict) -> SDE:
    """Inverse of `SDE.config()`."""
    config = dict(config)
    return make_sde(config.pop("name"), **config)

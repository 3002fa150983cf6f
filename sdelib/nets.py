"""Score networks s_theta(x, t) ~ grad_x log p_t(x).

`ScoreNet` is the tutorial's time-conditional U-Net for 1x28x28 images (1,115,425 parameters with
the default channels; optionally class-conditional, for classifier-free guidance); `MLPScoreNet` is a small net for 2-D toy data. Both divide their output by
the SDE's marginal std(t): the score of the perturbation kernel has norm ~ sqrt(D) / std(t), so
the net only has to predict a quantity of order one (the tutorial's "output / marginal_prob_std").
Both take the `SDE` they are trained for, and record their settings in `config()` so a checkpoint
can rebuild its own model (`net_from_config`).

Two classifiers are not score nets: `MNISTClassifier`, a small CNN whose penultimate features
measure sample quality (`metrics`), and `NoiseConditionalClassifier`, which classifies noisy x_t
(given t and its SDE) for classifier guidance (`controllable.classifier_guided_score`).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from .checks import check_int, check_labels, check_real
from .sde import SDE, check_batch, append_dims, sde_from_config

__all__ = ["NOISE_INPUTS", "OUTPUTS", "score_of_velocity", "ScoreNet", "MLPScoreNet", "MNISTClassifier",
           "NoiseConditionalClassifier", "GaussianFourierProjection", "noise_condition",
           "net_from_config", "count_parameters", "edm_preconditioning"]


def time_batch(net: str, x: torch.Tensor, t) -> torch.Tensor:
    """t as a (batch,) tensor on x's device: a number (in x's floating dtype) or a 0-d or (1,)
    tensor is repeated for every sample; a (batch,) tensor is returned as it is."""
    if torch.is_tensor(t):
        return t.reshape(1).expand(x.shape[0]).to(x.device) if t.numel() == 1 and t.ndim < 2 else t
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{net}: t must be a number or a tensor of shape (batch,), got "
                        f"{type(t).__name__} {t!r:.60}")
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return torch.full((x.shape[0],), float(t), dtype=dtype, device=x.device)


def check_positive_time(net: str, t: torch.Tensor) -> None:
    """A score net divides by std(t), which is 0 at t = 0: refuse t <= 0 (and NaN) instead of
    returning inf. On the CPU a plain check; on a GPU an asynchronous device assertion, so the
    forward pass never waits for the device (a failed one surfaces at the next synchronisation).
    Skipped while torch.compile traces (the check would break the graph)."""
    if torch.compiler.is_compiling() or not t.numel():
        return
    if t.device.type != "cpu":
        torch._assert_async((t > 0).all(), f"{net}: t must be > 0 (std(t) = 0 at t = 0)")
        return
    if not bool((t > 0).all()):
        raise ValueError(f"{net}: t must be > 0 (std(t) = 0 at t = 0, where the score is "
                         f"undefined), got values in [{t.min().item():.3g}, {t.max().item():.3g}]")


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of t: [sin(2 pi W t), cos(2 pi W t)], W ~ N(0, scale^2), fixed."""

    def __init__(self, embed_dim: int = 256, scale: float = 30.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embed_dim // 2) * scale, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class Dense(nn.Module):
    """A linear map of the time embedding, reshaped to add to (batch, channels, h, w) features."""

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.dense = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.dense(x)[..., None, None]


NOISE_INPUTS = ("time", "log_sigma")
OUTPUTS = ("score", "velocity", "denoiser")


def score_of_velocity(sde: SDE, x: torch.Tensor, t: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """The score s = 2 (A(t) x - u) / g(t)^2 of a probability-flow velocity u = A(t) x - g^2 s / 2
    (Song et al. 2021, eq. 13, solved for s)."""
    drift = sde.drift(x, t).to(velocity.dtype)
    g2 = append_dims(sde.diffusion(t) ** 2, x.ndim).to(velocity.dtype)
    return 2 * (drift - velocity) / g2


def noise_condition(sde: SDE, t: torch.Tensor, noise_input: str, noise_eps: float) -> torch.Tensor:
    """What the time embedding is fed: t itself (the tutorial), or with 'log_sigma' the log noise
    level ln sigma~(t) rescaled to [0, 1] over [sigma~(noise_eps), sigma~(T)] (as EDM feeds
    c_noise = ln(sigma) / 4, Karras et al. 2022, Table 1). With t, the Fourier features of scale 30
    barely move over t < 2.5e-3, which for the tutorial's VE is every sigma~ below 0.05."""
    if noise_input == "time":
        return t
    ends = sde.scaled_std(torch.tensor([noise_eps, sde.T], dtype=torch.float64)).log()
    log_sigma = sde.scaled_std(t).log()
    return (log_sigma - float(ends[0])) / float(ends[1] - ends[0])


def edm_preconditioning(sigma, sigma_data: float = 0.5):
    """EDM's preconditioning (Karras et al. 2022, eq. 7, Table 1, Appendix B.6) of
    the denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) of x = y + sigma n:

        c_skip  = sigma_data^2 / (sigma^2 + sigma_data^2),
        c_out   = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
        c_in    = 1 / sqrt(sigma^2 + sigma_data^2),
        c_noise = ln(sigma) / 4.

    For data of variance sigma_data^2, c_in gives F a unit-variance input, and c_skip,
    c_out give its training target (y - c_skip x) / c_out unit variance at every sigma,
    with the smallest c_out that allows. (The tutorial's ScoreNet is c_skip = 1,
    c_out = sigma, c_in = 1 in these terms: D = x + sigma^2 s with s = F / sigma.)

    sigma: a positive number or floating tensor, the noise level sigma~ = std / m of
    `SDE.scaled_std`. Returns (c_skip, c_out, c_in, c_noise), tensors of sigma's shape
    (float64 for a number)."""
    sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
    if not torch.is_tensor(sigma):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
            raise TypeError(f"sigma must be a positive number or a floating tensor, "
                            f"got {type(sigma).__name__}")
        sigma = torch.tensor(float(sigma), dtype=torch.float64)
    if not sigma.is_floating_point():
        raise TypeError(f"sigma must be a floating tensor, got dtype {sigma.dtype}")
    if sigma.numel() and not bool(((sigma > 0) & torch.isfinite(sigma)).all()):
        raise ValueError(f"sigma must be positive and finite, got values in "
                         f"[{sigma.min().item():.3g}, {sigma.max().item():.3g}]")
    total = sigma ** 2 + sigma_data ** 2
    return (sigma_data ** 2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(),
            sigma.log() / 4)


class ScoreNet(nn.Module):
    """The tutorial's U-Net: encoder 32/64/128/256 channels (strides 1, 2, 2, 2), decoder of
    transposed convolutions with skip connections, time injected densely at every level,
    GroupNorm and swish; output / std(t). `noise_input='log_sigma'` feeds the time embedding the
    normalised log noise level instead of t (`noise_condition`).

    `output='velocity'` makes the U-Net's output h the probability-flow velocity
    u = f(x, t) - g^2 s / 2 (the probability-flow drift, Song et al. 2021, eq. 13; flow matching
    regresses it, Lipman et al. 2023, section 4.1), and the net still returns
    the score, s = 2 (A(t) x - h) / g(t)^2, so that every sampler and the likelihood take it.

    `output='denoiser'` is EDM's preconditioning (Karras et al. 2022, eq. 7; `edm_preconditioning`
    with `sigma_data`) in the rescaled state x~ = x / m(t) at noise level sigma~(t): the U-Net sees
    c_in x~, and D = c_skip x~ + c_out h estimates E[x_0 | x_t]; the net returns the score
    s = (m D - x) / std^2 (Tweedie's formula, std = m sigma~)."""

    def __init__(self, sde: SDE, channels=(32, 64, 128, 256), embed_dim: int = 256,
                 image_channels: int = 1, noise_input: str = "time", noise_eps: float = 1e-5,
                 num_classes: int = 0, output: str = "score", sigma_data: float = 0.5):
        super().__init__()
        num_classes = check_int("num_classes", num_classes, minimum=0)
        if noise_input not in NOISE_INPUTS:
            raise ValueError(f"unknown noise_input {noise_input!r}; choose one of {NOISE_INPUTS}")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; choose one of {OUTPUTS}")
        self.output = output
        self.sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
        self.sde = sde
        self.channels, self.embed_dim, self.image_channels = tuple(channels), embed_dim, image_channels
        self.noise_input, self.noise_eps = noise_input, float(noise_eps)
        c = channels
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim), nn.Linear(embed_dim, embed_dim))
        # Encoder: 28 -> 26 -> 12 -> 5 -> 2
        self.conv1 = nn.Conv2d(image_channels, c[0], 3, stride=1, bias=False)
        self.dense1, self.gnorm1 = Dense(embed_dim, c[0]), nn.GroupNorm(4, c[0])
        self.conv2 = nn.Conv2d(c[0], c[1], 3, stride=2, bias=False)
        self.dense2, self.gnorm2 = Dense(embed_dim, c[1]), nn.GroupNorm(32, c[1])
        self.conv3 = nn.Conv2d(c[1], c[2], 3, stride=2, bias=False)
        self.dense3, self.gnorm3 = Dense(embed_dim, c[2]), nn.GroupNorm(32, c[2])
        self.conv4 = nn.Conv2d(c[2], c[3], 3, stride=2, bias=False)
        self.dense4, self.gnorm4 = Dense(embed_dim, c[3]), nn.GroupNorm(32, c[3])
        # Decoder: 2 -> 5 -> 12 -> 26 -> 28
        self.tconv4 = nn.ConvTranspose2d(c[3], c[2], 3, stride=2, bias=False)
        self.dense5, self.tgnorm4 = Dense(embed_dim, c[2]), nn.GroupNorm(32, c[2])
        self.tconv3 = nn.ConvTranspose2d(2 * c[2], c[1], 3, stride=2, bias=False, output_padding=1)
        self.dense6, self.tgnorm3 = Dense(embed_dim, c[1]), nn.GroupNorm(32, c[1])
        self.tconv2 = nn.ConvTranspose2d(2 * c[1], c[0], 3, stride=2, bias=False, output_padding=1)
        self.dense7, self.tgnorm2 = Dense(embed_dim, c[0]), nn.GroupNorm(32, c[0])
        self.tconv1 = nn.ConvTranspose2d(2 * c[0], image_channels, 3, stride=1)
        # Class conditioning (created last, so an unconditional net initialises as before): one
        # learned vector per class and one for the null label "no class", added to the time
        # embedding (Ho & Salimans 2022 train one net for both by dropping labels).
        self.num_classes, self.null_label = num_classes, num_classes
        if num_classes:
            self.label_embed = nn.Embedding(num_classes + 1, embed_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label=None) -> torch.Tensor:
        """The score at (x, t), t of shape (batch,) or one number for every image; a
        class-conditional net also takes `label` (a class in 0..num_classes - 1 or the null
        label `null_label`, one or one per image; None: the null label, i.e. the unconditional
        score)."""
        if x.ndim != 4 or x.shape[1:] != (self.image_channels, 28, 28):
            raise ValueError(f"ScoreNet expects images of shape (batch, {self.image_channels}, "
                             f"28, 28), got {tuple(x.shape)}")
        t = time_batch("ScoreNet", x, t)
        check_batch(x, t)
        check_positive_time("ScoreNet", t)
        embed = self.embed(noise_condition(self.sde, t, self.noise_input, self.noise_eps))
        if self.num_classes:
            labels = (torch.full((x.shape[0],), self.null_label, device=x.device) if label is None
                      else check_labels("labels", label, self.num_classes, count=x.shape[0],
                                        null_label=self.null_label, null_allowed=True,
                                        device=x.device))
            embed = embed + self.label_embed(labels)
        elif label is not None:
            raise ValueError("this ScoreNet is not class-conditional (num_classes = 0): "
                             "call it without a label")
        embed = swish(embed)
        if self.output == "denoiser":
            mean = append_dims(self.sde.mean_coeff(t), x.ndim)
            c_skip, c_out, c_in, _ = (append_dims(c, x.ndim).to(x.dtype) for c in
                                      edm_preconditioning(self.sde.scaled_std(t), self.sigma_data))
            x_scaled = x / mean.to(x.dtype)
            h = self._unet(c_in * x_scaled, embed)
            denoised = c_skip * x_scaled + c_out * h
            std = append_dims(self.sde.marginal_std(t), x.ndim).to(x.dtype)
            return (mean.to(x.dtype) * denoised - x) / std ** 2
        h = self._unet(x, embed)
        if self.output == "velocity":
            return score_of_velocity(self.sde, x, t, h)
        return h / append_dims(self.sde.marginal_std(t), h.ndim).to(h.dtype)

    def _unet(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """The U-Net's raw output h for input x and the (swished) embedding."""
        h1 = swish(self.gnorm1(self.conv1(x) + self.dense1(embed)))
        h2 = swish(self.gnorm2(self.conv2(h1) + self.dense2(embed)))
        h3 = swish(self.gnorm3(self.conv3(h2) + self.dense3(embed)))
        h4 = swish(self.gnorm4(self.conv4(h3) + self.dense4(embed)))
        h = swish(self.tgnorm4(self.tconv4(h4) + self.dense5(embed)))
        h = swish(self.tgnorm3(self.tconv3(torch.cat([h, h3], dim=1)) + self.dense6(embed)))
        h = swish(self.tgnorm2(self.tconv2(torch.cat([h, h2], dim=1)) + self.dense7(embed)))
        return self.tconv1(torch.cat([h, h1], dim=1))

    def config(self) -> dict:
        config = {"name": "ScoreNet", "channels": list(self.channels), "embed_dim": self.embed_dim,
                  "image_channels": self.image_channels}
        if self.noise_input != "time":  # older checkpoints (t-conditioned) keep their config
            config.update(noise_input=self.noise_input, noise_eps=self.noise_eps)
        if self.num_classes:  # likewise for unconditional ones
            config.update(num_classes=self.num_classes)
        if self.output != "score":  # and for score nets
            config.update(output=self.output)
        if self.output == "denoiser":
            config.update(sigma_data=self.sigma_data)
        return config


class MLPScoreNet(nn.Module):
    """A small MLP score net for D-dimensional points: [x, Fourier(t)] -> hidden -> D, / std(t)."""

    def __init__(self, sde: SDE, dim: int = 2, hidden: int = 128, depth: int = 3,
                 embed_dim: int = 32, scale: float = 16.0):
        super().__init__()
        self.sde = sde
        self.dim, self.hidden, self.depth, self.embed_dim, self.scale = dim, hidden, depth, embed_dim, scale
        self.embed = GaussianFourierProjection(embed_dim, scale)
        layers, width = [], dim + embed_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.mlp = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPScoreNet expects points of shape (batch, {self.dim}), got {tuple(x.shape)}")
        t = time_batch("MLPScoreNet", x, t)
        check_batch(x, t)
        check_positive_time("MLPScoreNet", t)
        h = self.mlp(torch.cat([x, self.embed(t).to(x.dtype)], dim=1))
        return h / self.sde.marginal_std(t)[:, None].to(h.dtype)

    def config(self) -> dict:
        return {"name": "MLPScoreNet", "dim": self.dim, "hidden": self.hidden, "depth": self.depth,
                "embed_dim": self.embed_dim, "scale": self.scale}


class MNISTClassifier(nn.Module):
    """A small CNN for 1x28x28 digits: two 3x3 conv + max-pool blocks (32, 64 channels), a 128-unit
    hidden layer whose activations are the `features` of the Fréchet distance, and 10 logits."""

    def __init__(self, feature_dim: int = 128):
        super().__init__()
        self.feature_dim = feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 7 * 7, feature_dim), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feature_dim, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"MNISTClassifier expects images of shape (batch, 1, 28, 28), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict:
        return {"name": "MNISTClassifier", "feature_dim": self.feature_dim}


class NoiseConditionalClassifier(nn.Module):
    """p_t(y | x_t) for classifier guidance: MNISTClassifier's layers, with the input scaled by
    1 / sqrt(m(t)^2 + std(t)^2) (unit scale at every t for [0, 1] data) and ScoreNet's Fourier time
    embedding added to every block; GroupNorm, as noisy batches mix noise levels."""

    def __init__(self, sde: SDE, embed_dim: int = 128, num_classes: int = 10):
        super().__init__()
        self.sde, self.embed_dim, self.num_classes = sde, embed_dim, num_classes
        self.embed = nn.Sequential(GaussianFourierProjection(embed_dim, 16.0), nn.Linear(embed_dim, embed_dim))
        self.conv1, self.dense1, self.norm1 = nn.Conv2d(1, 32, 3, padding=1), Dense(embed_dim, 32), nn.GroupNorm(4, 32)
        self.conv2, self.dense2, self.norm2 = nn.Conv2d(32, 64, 3, padding=1), Dense(embed_dim, 64), nn.GroupNorm(8, 64)
        self.fc, self.dense3 = nn.Linear(64 * 7 * 7, 128), nn.Linear(embed_dim, 128)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"NoiseConditionalClassifier expects (batch, 1, 28, 28), got {tuple(x.shape)}")
        t = time_batch("NoiseConditionalClassifier", x, t)
        check_batch(x, t)
        scale = torch.rsqrt(self.sde.mean_coeff(t) ** 2 + self.sde.marginal_std(t) ** 2)
        h = x * append_dims(scale, x.ndim).to(x.dtype)
        embed = swish(self.embed(t.to(x.dtype)))
        h = nn.functional.max_pool2d(swish(self.norm1(self.conv1(h) + self.dense1(embed))), 2)
        h = nn.functional.max_pool2d(swish(self.norm2(self.conv2(h) + self.dense2(embed))), 2)
        h = swish(self.fc(h.flatten(1)) + self.dense3(embed))
        return self.head(h)

    def config(self) -> dict:
        return {"name": "NoiseConditionalClassifier", "embed_dim": self.embed_dim, "num_classes": self.num_classes}


def net_from_config(net_config: dict, sde_config: dict | None) -> nn.Module:
    """Rebuild a net (untrained) from the settings a checkpoint stores (no SDE for a classifier)."""
    net_config = dict(net_config)
    name = net_config.pop("name")
    nets = {"ScoreNet": ScoreNet, "MLPScoreNet": MLPScoreNet, "MNISTClassifier": MNISTClassifier,
            "NoiseConditionalClassifier": NoiseConditionalClassifier}
    if name not in nets:
        raise ValueError(f"unknown net {name!r}; choose one of {sorted(nets)}")
    if name == "MNISTClassifier":
        return MNISTClassifier(**net_config)
    return nets[name](sde_from_config(sde_config), **net_config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

"""sdelib: score-based generative modelling with SDEs, small enough to read top to bottom.

    sde.py          forward SDEs (VE, VP, sub-VP), perturbation kernels, noise levels, reverse SDE
    nets.py         ScoreNet (MNIST U-Net), MLPScoreNet (2-D toy data), the MNIST classifiers
    losses.py       denoising score matching, importance-sampled t for the likelihood weighting
    ode.py          one adaptive ODE solve (scipy or torchdiffeq) for the samplers and likelihood
    samplers.py     Euler–Maruyama, predictor–corrector, probability-flow ODE, few-step solvers
    controllable.py inpainting and classifier guidance
    likelihood.py   log-likelihood by the probability-flow ODE, bits/dim
    latents.py      encode / decode with the probability-flow ODE, slerp, DDIM
    data.py         MNIST (fetched by the library), Gaussian mixtures with exact scores
    train.py        training loops and the training CLI
    pretrained.py   checkpoints and the models shipped inside the package
    metrics.py      mean ± standard error, classifiers' accuracy, Fréchet distance
    provenance.py   the machine / command / date of every result, and the results folder
    device.py       the device and precision every chapter uses
    viz.py          sample grids, plots, sliders that work live and in the static book
"""
from .device import default_device, precision
from .sde import SDE, GeometricVESDE, SubVPSDE, VESDE, VPSDE, append_dims, make_sde

__version__ = "0.1.0"
__all__ = ["SDE", "VESDE", "GeometricVESDE", "VPSDE", "SubVPSDE", "append_dims", "make_sde",
           "default_device", "precision"]

"""sdelib: score-based generative modelling with SDEs, small enough to read top to bottom.

    sde.py        forward SDEs (VE, VP, sub-VP), perturbation kernels, reverse SDE / ODE
    nets.py       ScoreNet (MNIST U-Net) and MLPScoreNet (2-D toy data)
    losses.py     denoising score matching
    samplers.py   Euler–Maruyama, predictor–corrector, probability-flow ODE, few-step solvers
    likelihood.py log-likelihood by the probability-flow ODE, bits/dim
    data.py       MNIST (fetched by the library), Gaussian mixtures with exact scores
    train.py      training loop, checkpoints, the shipped pretrained models
    metrics.py    mean ± standard error, evaluation of trained models
    viz.py        sample grids, plots, sliders that work live and in the static book
"""
from .sde import SDE, GeometricVESDE, SubVPSDE, VESDE, VPSDE, append_dims, make_sde

__version__ = "0.1.0"
__all__ = ["SDE", "VESDE", "GeometricVESDE", "VPSDE", "SubVPSDE", "append_dims", "make_sde"]

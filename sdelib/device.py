"""One device choice for the whole book: the GPU when there is one, else the CPU."""
from __future__ import annotations

import torch

__all__ = ["default_device"]


def default_device() -> torch.device:
    """cuda if torch sees a GPU, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")

"""Checkpoints and the models shipped inside the package.

A checkpoint is a plain dict, loadable with `torch.load(weights_only=True)`, that carries the
settings of its SDE and net, so `model_from_checkpoint` rebuilds the model and its SDE without
being told what they were. `save_checkpoint` writes atomically (a temporary file, then a rename).

The shipped models live in `sdelib/checkpoints/<name>.pt`, each with a JSON log beside it (sha256,
settings, loss per epoch, machine, wall time, command). `load_pretrained(name)` checks the sha256
before loading; `export_pretrained` writes that pair from a finished training checkpoint.
`SHIPPED` names each shipped model and the command that retrains it.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .nets import net_from_config
from .provenance import sha256

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_DIR", "SHIPPED", "CheckpointError", "make_checkpoint",
    "save_checkpoint", "load_checkpoint", "model_from_checkpoint", "export_pretrained",
    "load_pretrained",
]

CHECKPOINT_FORMAT = "sdelib-checkpoint-v1"
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

# name -> (what it is, the command that retrains and exports it)
SHIPPED = {
    "mnist-ve": ("ScoreNet for the tutorial's VE SDE (sigma = 25), the tutorial's recipe",
                 "python -m sdelib.train --sde ve --epochs 30 --batch-size 128 --lr 5e-4 "
                 "--channels-last --out mnist-ve-train.pt --export mnist-ve"),
    "mnist-ve-is": ("ScoreNet for the tutorial's VE SDE trained for likelihood: importance-sampled "
                    "t, conditioned on ln sigma~, dequantised images",
                    "python -m sdelib.train --sde ve --epochs 30 --batch-size 128 --lr 5e-4 "
                    "--channels-last --weighting likelihood --importance-sampling "
                    "--noise-input log_sigma --dequantize --out mnist-ve-is-train.pt "
                    "--export mnist-ve-is"),
    "mnist-classifier": ("MNISTClassifier, the evaluation classifier",
                         "python benchmarks/train_classifier.py"),
    "mnist-noisy-classifier": ("NoiseConditionalClassifier for classifier guidance",
                               "python benchmarks/train_classifier.py --noise-conditional"),
}


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, corrupt, truncated or for another model."""


def make_checkpoint(model: nn.Module, sde, *, history: list, step: int, epoch: float,
                    settings: dict, ema: nn.Module | None = None, **extra) -> dict:
    """The checkpoint dict of a model (and its EMA), with the settings that rebuild it."""
    return {"format": CHECKPOINT_FORMAT, "sde": sde.config() if sde is not None else None,
            "net": model.config(), "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "history": history,
            "step": step, "epoch": epoch, "settings": settings, **extra}


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state` atomically: to a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; checkpoints are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; a clear CheckpointError if it is not one of ours."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an sdelib checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def model_from_checkpoint(path_or_state, use_ema: bool = True, map_location="cpu"):
    """Rebuild (model, sde) from a checkpoint; the EMA weights by default. Model in eval mode."""
    state = path_or_state if isinstance(path_or_state, dict) else load_checkpoint(path_or_state, map_location)
    model = net_from_config(state["net"], state["sde"])
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    model.load_state_dict(weights)
    return model.eval(), getattr(model, "sde", None)


def export_pretrained(train_checkpoint: str | Path, out: str | Path, extra_log: dict | None = None) -> dict:
    """Write the shippable form of a training checkpoint: EMA weights only (a few MB), its settings
    and history; and a sidecar `<out>.json` with the sha256 and the training log."""
    state = load_checkpoint(train_checkpoint)
    small = {k: state[k] for k in ("format", "sde", "net", "history", "settings", "step", "epoch")}
    small["model"] = state["ema"] if state.get("ema") is not None else state["model"]
    small["ema"] = None
    out = Path(out)
    save_checkpoint(small, out)
    log = {"file": out.name, "sha256": sha256(out), "sde": state["sde"], "net": state["net"],
           "settings": state["settings"], "steps": state["step"], "history": state["history"]}
    log.update(extra_log or {})
    out.with_suffix(".json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def load_pretrained(name: str = "mnist-ve", map_location="cpu"):
    """The model shipped in `sdelib/checkpoints/<name>.pt` and its SDE, after checking its sha256."""
    path = CHECKPOINT_DIR / f"{name}.pt"
    meta_path = path.with_suffix(".json")
    command = SHIPPED[name][1] if name in SHIPPED else f"python -m sdelib.train --export {name} ..."
    retrain = f"Retrain it with `{command}` (see README), or reinstall sdelib."
    if not path.exists() or not meta_path.exists():
        available = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))
        raise CheckpointError(f"no shipped checkpoint {name!r} (available: {available}). {retrain}")
    expected = json.loads(meta_path.read_text())["sha256"]
    actual = sha256(path)
    if actual != expected:
        raise CheckpointError(f"{path} has sha256 {actual}, expected {expected}: the file is "
                              f"corrupt or was changed. {retrain}")
    return model_from_checkpoint(path, map_location=map_location)

"""Training a score net by denoising score matching, with checkpoints that rebuild their model.

The fast path (`train`):
- the whole dataset lives on the device as one tensor; batches are taken by index (no DataLoader);
- Adam with linear warm-up then cosine decay, gradient clipping, EMA of the weights;
- switchable bf16 autocast (or any `device.precision`, fp16 with a gradient scaler), channels_last
  and `torch.compile`;
- runs unchanged under `torchrun --nproc_per_node N` (DistributedDataParallel: every rank draws the
  same global batch of indices and noise and keeps its own slice, so N ranks compute exactly the
  gradient of one process with the same global batch);
- checkpoints atomically every `checkpoint_every` seconds, at the end of each epoch and on Ctrl-C,
  and resumes bit-for-bit: the epoch's permutation is a function of (seed, epoch), and the state of
  the noise generator is saved.

Checkpoints (format, atomic save, load, the shipped models) are in `pretrained.py`.

CLI: `python -m sdelib.train --sde ve --epochs 30 --batch-size 128 --out mnist-ve.pt` (see --help).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .checks import (check_bool, check_choice, check_data, check_instance, check_int,
                     check_labels, check_positive_int, check_real, check_tensor)
from .device import Precision, autocast, default_device
from .losses import WEIGHTINGS, dsm_loss, edm_log_normal, importance_weight, sample_time
from .metrics import classifier_accuracy
from .nets import ScoreNet
from .pretrained import (CHECKPOINT_DIR, CheckpointError, deferred_sigint, export_pretrained,
                         load_checkpoint, make_checkpoint, remove_stale_temporaries,
                         load_pretrained, require_keys, save_checkpoint, training_lock)
from .provenance import provenance
from .sde import SDE, make_sde, normal_like

SCHEDULES = ("cosine", "constant")

__all__ = ["TRAINING_SETTINGS", "SCHEDULES", "train", "train_classifier", "learning_rate",
           "ema_decay_at", "ema_update", "epoch_permutation", "initialise_from", "main"]

# The settings a training run records (its checkpoint's "settings"); their defaults are written once,
# in `train`'s signature, and the CLI is built from them.
TRAINING_SETTINGS = ("epochs", "batch_size", "lr", "warmup_steps", "schedule", "ema_decay",
                     "grad_clip", "eps", "weighting", "importance_sampling", "sigma_data", "dequantize", "seed",
                     "bf16", "channels_last", "compile")

# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------
def learning_rate(step: int, total_steps: int, lr: float, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up to lr, then constant or cosine decay to 0 at total_steps."""
    check_choice("schedule", schedule, SCHEDULES)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, ema_decay: float) -> float:
    """EMA decay with warm-up, min(ema_decay, (1 + step) / (10 + step)).

    Without the warm-up an EMA of decay 0.999 still holds exp(-1000 / 1000) ~ 37 % of the random
    initial weights after 1,000 steps; with it the average forgets the initialisation within ~100 steps."""
    return min(ema_decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter by parameter."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def _distributed():
    """(rank, world_size): (0, 1) unless torch.distributed was initialised (e.g. by torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training items in `epoch`: a function of (seed, epoch) alone, so a
    resumed run takes the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train(model: nn.Module, sde: SDE, images: torch.Tensor, *, epochs: int = 30,
          batch_size: int = 128, lr: float = 5e-4, warmup_steps: int = 500, schedule: str = "cosine",
          ema_decay: float = 0.999, grad_clip: float = 1.0, eps: float = 1e-5, weighting: str = "std2",
          importance_sampling: bool = False, sigma_data: float = 0.5, dequantize: bool = False,
          seed: int = 0, labels: torch.Tensor | None = None, label_dropout: float = 0.1,
          device=None, checkpoint: str | Path | None = None,
          checkpoint_every: float = 120.0, time_budget: float | None = None, max_steps: int | None = None,
          bf16: bool = False, channels_last: bool = False, compile: bool = False,
          precision: Precision | None = None,
          progress: bool = True) -> dict:
    """Train `model` (whose output is the score) on `images` by DSM; resume from `checkpoint`.

    Returns the final checkpoint dict (model, ema, history, ...). `time_budget` (seconds) and
    `max_steps` stop early (the state is saved; call again to continue); `max_steps` counts from
    the start of the run, so a resumed run stops at the same step. `images` are converted to the
    model's dtype (float32 unless the model was cast). `precision` (a `device.precision(...)`)
    sets the autocast dtype and the fp16 gradient scaler, overriding `bf16`.

    A class-conditional model (`ScoreNet(num_classes=10)`) needs `labels` (one class per image)
    and learns the conditional and the unconditional score at once: each label is replaced by
    the null label with probability `label_dropout` (Ho & Salimans 2022, Algorithm 1)."""
    from tqdm.auto import tqdm

    check_instance("model", model, nn.Module, "MLPScoreNet(sde)")
    check_instance("sde", sde, SDE, "VESDE(25.0)")
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    warmup_steps = check_int("warmup_steps", warmup_steps, minimum=0)
    check_choice("schedule", schedule, SCHEDULES)
    ema_decay = check_real("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)
    grad_clip = check_real("grad_clip", grad_clip, low=0.0)
    eps = check_real("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True)
    check_choice("weighting", weighting, WEIGHTINGS)
    for name, flag in (("importance_sampling", importance_sampling), ("dequantize", dequantize),
                       ("bf16", bf16), ("channels_last", channels_last), ("compile", compile)):
        check_bool(name, flag)
    if precision is not None:
        check_instance("precision", precision, Precision, "sdelib.precision(device)")
    if importance_sampling and weighting != "likelihood":
        raise ValueError("importance_sampling draws t for the 'likelihood' weighting; "
                         f"got weighting={weighting!r}")
    sigma_data = check_real("sigma_data", sigma_data, low=0.0, low_open=True)
    if getattr(model, "output", None) == "denoiser" and model.sigma_data != sigma_data:
        raise ValueError(f"the model's sigma_data is {model.sigma_data:g} but the loss would use "
                         f"sigma_data={sigma_data:g}: give the same value to both")
    seed = check_int("seed", seed, minimum=0)
    checkpoint_every = check_real("checkpoint_every", checkpoint_every, low=0.0, low_open=True,
                                  finite=False)
    if time_budget is not None:
        time_budget = check_real("time_budget", time_budget, low=0.0, low_open=True)
    if max_steps is not None:
        max_steps = check_positive_int("max_steps", max_steps)
    check_tensor("images", images)
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    check_data("images", images)                         # once: NaN in the data, not per step
    num_classes = getattr(model, "num_classes", 0)
    if num_classes:
        if labels is None:
            raise ValueError("a class-conditional model needs labels: one class per image")
        labels = check_labels("labels", labels, num_classes, count=images.shape[0])
        label_dropout = check_real("label_dropout", label_dropout, low=0.0, high=1.0)
    elif labels is not None:
        raise ValueError("labels were given but the model is not class-conditional; build it "
                         "with ScoreNet(sde, num_classes=10)")
    rank, world = _distributed()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {world} processes")
    device = torch.device(device) if device is not None else default_device()
    n = images.shape[0]
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} images)")
    total_steps = epochs * steps_per_epoch
    arguments = locals()
    settings = {name: arguments[name] for name in TRAINING_SETTINGS}
    settings.update(world_size=world, dataset_size=n)
    if num_classes:  # recorded only for class-conditional runs (older logs stay as they were)
        settings.update(class_conditional=True, label_dropout=label_dropout)
    # One training per output: the lock dies with its process, so a resume after a crash is never
    # blocked; holding it, the temporary files of a killed save are ours to remove.
    saves = checkpoint is not None and rank == 0
    with training_lock(checkpoint) if saves else contextlib.nullcontext():
        if saves:
            remove_stale_temporaries(checkpoint)
        return _train(**locals())


def _train(*, model, sde, images, epochs, batch_size, lr, warmup_steps, schedule, ema_decay,
           grad_clip, eps, weighting, importance_sampling, sigma_data, dequantize, seed, labels,
           label_dropout,
           num_classes, device, checkpoint,
           checkpoint_every, time_budget, max_steps, bf16, channels_last, compile, precision,
           progress, rank, world, n, steps_per_epoch, total_steps, settings, tqdm, **_) -> dict:
    """The loop of `train`, its arguments checked."""
    model = model.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        model = model.to(memory_format=memory_format)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    noise_gen = torch.Generator(device=device).manual_seed(seed)
    step, history = 0, []

    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, map_location=device)
        require_keys(state, ("net", "sde", "model", "ema", "optimizer", "generator", "step",
                             "history", "settings"), checkpoint)
        _check_compatible(state, model, sde)
        if state["settings"]["batch_size"] != batch_size or state["settings"]["epochs"] != epochs:
            raise CheckpointError(f"{checkpoint} was trained with batch_size "
                                  f"{state['settings']['batch_size']} and {state['settings']['epochs']} "
                                  f"epochs; resume with the same settings or use a new --out")
        try:
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            noise_gen.set_state(state["generator"].cpu())
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
            detail = "; ".join(line.strip() for line in str(exc).splitlines()[:3])
            raise CheckpointError(f"{checkpoint} does not fit this model ({detail[:300]}); "
                                  "resume with the same net or use a new --out") from None
        step, history = state["step"], state["history"]
        # (loss sum, images, seconds) of the unfinished epoch; older checkpoints hold no seconds
        epoch_loss, epoch_count, *earlier = state.get("epoch_progress", (0.0, 0))
        epoch_seconds = earlier[0] if earlier else 0.0
    else:
        epoch_loss, epoch_count, epoch_seconds = 0.0, 0, 0.0
    gen_state = noise_gen.get_state()  # the state at the start of the next step (what a save stores)

    data = images.to(device=device, dtype=next(model.parameters()).dtype)
    label_data = labels.to(device) if num_classes else None
    step_model = model
    if world > 1:
        step_model = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        step_model = torch.compile(step_model)

    def state_dict():
        return make_checkpoint(model, sde, ema=ema, history=history, step=step,
                               epoch=step / steps_per_epoch, settings=settings,
                               optimizer=optimizer.state_dict(), generator=gen_state,
                               epoch_progress=(epoch_loss, epoch_count,
                                               epoch_seconds + time.monotonic() - epoch_start))

    def save():
        if checkpoint is not None and rank == 0:
            save_checkpoint(state_dict(), checkpoint)

    # With importance sampling the loss carries the constant Z / (T - eps) (about 16 for the
    # tutorial's VE); the step uses loss / Z so that grad_clip sees gradients of the usual size.
    loss_scale = importance_weight(sde, eps) if importance_sampling else 1.0
    log_normal = edm_log_normal(sigma_data) if weighting == "edm" else None  # EDM's noise levels
    # `precision` (from device.precision) overrides the bf16 switch; fp16 needs a gradient scaler,
    # which is a no-op pass-through when disabled.
    chosen = precision or Precision(torch.bfloat16 if bf16 else torch.float32, False,
                                    "bf16 autocast" if bf16 else "float32")
    settings["autocast"] = str(chosen.dtype).removeprefix("torch.")
    scaler = torch.amp.GradScaler(device.type, enabled=chosen.grad_scaler)
    local = batch_size // world
    start, last_save = time.monotonic(), time.monotonic()
    epoch_start = time.monotonic()   # of this process's part of the epoch (+ epoch_seconds before)
    bar = tqdm(total=total_steps, initial=step, disable=not progress or rank != 0,
               desc=f"DSM {sde.name}", unit="step")
    perm, perm_epoch = None, -1
    try:
        while step < total_steps:
            epoch, i = divmod(step, steps_per_epoch)
            if perm_epoch != epoch:
                perm, perm_epoch = epoch_permutation(n, seed, epoch).to(device), epoch
            idx = perm[i * batch_size:(i + 1) * batch_size]
            t = sample_time(sde, batch_size, eps=eps, importance_sampling=importance_sampling,
                            log_normal=log_normal, generator=noise_gen, device=device)
            z = torch.randn((batch_size,) + tuple(data.shape[1:]), generator=noise_gen, device=device)
            shard = slice(rank * local, (rank + 1) * local)
            x0 = data[idx[shard]]
            if dequantize:  # the uniformly dequantised images the likelihood is evaluated on
                u = torch.rand((batch_size,) + tuple(data.shape[1:]), generator=noise_gen, device=device)
                x0 = (255 * x0 + u[shard].to(x0.dtype)) / 256
            x0 = x0.contiguous(memory_format=memory_format) if data.ndim == 4 else x0
            score_fn = step_model
            if num_classes:  # drop each label to the null label with probability label_dropout
                drop = torch.rand(batch_size, generator=noise_gen, device=device) < label_dropout
                y = torch.where(drop, model.null_label, label_data[idx])[shard]
                score_fn = lambda x, t: step_model(x, t, y)  # noqa: E731
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, lr, warmup_steps, schedule)
            try:
                with autocast(device, chosen):
                    loss = dsm_loss(score_fn, sde, x0, t=t[shard], z=z[shard].to(x0.dtype),
                                    weighting=weighting, importance_sampling=importance_sampling,
                                    eps=eps, check_finite=False, sigma_data=sigma_data)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss / loss_scale).backward()
            except torch.cuda.OutOfMemoryError as exc:
                raise RuntimeError(f"CUDA out of memory at batch size {batch_size} ({local} per process) "
                                   f"on {device}: lower --batch-size") from exc
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower the learning rate")
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            # The update and its bookkeeping as one unit: a Ctrl-C lands before or after it, so
            # the state the Ctrl-C path saves is always that of a whole number of steps.
            with deferred_sigint():
                scaler.step(optimizer)
                scaler.update()
                ema_update(ema, model, ema_decay_at(step, ema_decay))
                step += 1
                gen_state = noise_gen.get_state()
                epoch_loss += loss.item() * local
                epoch_count += local
                epoch_done = step % steps_per_epoch == 0
                if epoch_done:
                    seconds = epoch_seconds + time.monotonic() - epoch_start
                    history.append({"epoch": epoch, "loss": epoch_loss / epoch_count,
                                    "seconds": seconds,
                                    "images_per_s": epoch_count * world / seconds})
                    epoch_loss, epoch_count, epoch_start = 0.0, 0, time.monotonic()
                    epoch_seconds = 0.0
            bar.update(1)
            if step % 20 == 0 and epoch_count:
                bar.set_postfix(loss=f"{epoch_loss / epoch_count:.2f}", epoch=epoch)
            if epoch_done:
                save()
                last_save = time.monotonic()
            elif time.monotonic() - last_save > checkpoint_every:
                save()
                last_save = time.monotonic()
            if (time_budget is not None and time.monotonic() - start > time_budget) or \
                    (max_steps is not None and step >= max_steps):
                break
    except KeyboardInterrupt:
        save()
        bar.close()
        raise
    bar.close()
    save()
    return state_dict()


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 4,
                     batch_size: int = 128, lr: float = 1e-3, seed: int = 0, device=None,
                     test: tuple[torch.Tensor, torch.Tensor] | None = None, sde: SDE | None = None,
                     eps: float = 1e-3, shift: int = 0, progress: bool = True) -> dict:
    """Train a classifier (cross-entropy, Adam with cosine decay, the data resident on the device,
    batches by index as in `train`). Returns a checkpoint dict (format as `train`'s) whose history
    holds the training loss and, if `test` = (images, labels) is given, the test accuracy after
    each epoch. With `sde` the classifier is noise-conditional, `model(x_t, t)`: each image is
    perturbed to x_t = m(t) x_0 + std(t) z with t ~ U(eps, 1), as in DSM; test accuracy is then
    reported on clean (t = eps) and on half-noised (t = 0.5) test images. `shift` > 0 augments
    each batch by a random translation of up to `shift` pixels in each direction (a roll: MNIST's
    borders are black)."""
    from tqdm.auto import tqdm

    check_instance("model", model, nn.Module, "MNISTClassifier()")
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    seed, shift = check_int("seed", seed, minimum=0), check_int("shift", shift, minimum=0)
    if sde is not None:
        check_instance("sde", sde, SDE, "VESDE(25.0)")
        eps = check_real("eps", eps, low=0.0, high=sde.T, low_open=True, high_open=True)
    check_tensor("images", images)
    if not torch.is_floating_point(images):
        raise TypeError(f"images must be floating point in [0, 1], got dtype {images.dtype}")
    check_data("images", images)
    check_tensor("labels", labels)
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    device = torch.device(device) if device is not None else default_device()
    n = images.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    steps_per_epoch = n // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {batch_size} is larger than the dataset ({n} images)")
    total_steps = epochs * steps_per_epoch
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    data, targets = images.to(device, torch.float32), labels.to(device)
    history, step = [], 0
    noise = torch.Generator(device=device).manual_seed(seed)
    bar = tqdm(total=total_steps, disable=not progress, desc="classifier", unit="step")
    for epoch in range(epochs):
        model.train()
        perm = epoch_permutation(n, seed, epoch).to(device)
        start, total_loss = time.monotonic(), 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, total_steps, lr, 0, "cosine")
            x0 = data[idx]
            if shift:
                dy, dx = torch.randint(-shift, shift + 1, (2,), generator=noise, device=device).tolist()
                x0 = torch.roll(x0, (dy, dx), dims=(2, 3))
            if sde is None:
                logits = model(x0)
            else:
                t = torch.rand(len(idx), generator=noise, device=device) * (sde.T - eps) + eps
                x_t = sde.perturb(x0, t, normal_like(x0, noise))
                logits = model(x_t, t)
            loss = nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
            step += 1
            bar.update(1)
        entry = {"epoch": epoch, "loss": total_loss / steps_per_epoch, "seconds": time.monotonic() - start}
        if test is not None and sde is None:
            entry["test_accuracy"] = classifier_accuracy(model, *test)
        elif test is not None:
            entry["test_accuracy"] = classifier_accuracy(model, *test, t=eps)
            entry["test_accuracy_t0.5"] = classifier_accuracy(model, *test, t=0.5, sde=sde, seed=seed)
        bar.set_postfix(entry)
        history.append(entry)
    bar.close()
    model.eval()
    return make_checkpoint(model, sde, history=history, step=step, epoch=float(epochs),
                           settings={"epochs": epochs, "batch_size": batch_size, "lr": lr,
                                     "seed": seed, "shift": shift, "schedule": "cosine",
                                     "dataset_size": n})


def _check_compatible(state: dict, model: nn.Module, sde: SDE) -> None:
    if state["net"] != model.config():
        raise CheckpointError(f"checkpoint is for net {state['net']}, not {model.config()}")
    if state["sde"] != sde.config():
        raise CheckpointError(f"checkpoint is for SDE {state['sde']}, not {sde.config()}")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def initialise_from(model: nn.Module, sde: SDE, name: str) -> dict:
    """Copy the weights of the shipped model `name` into `model` (a warm start: `train` then goes
    on from them with its own schedule); returns {"init": {"name", "sha256"}} for the new model's log.

    The new run's options must build the same net on the same SDE; a resumed run's checkpoint
    replaces these weights, as it does any initialisation."""
    start, start_sde = load_pretrained(name)
    if start.config() != model.config() or start_sde.config() != sde.config():
        raise CheckpointError(f"--init {name}: it is the net {start.config()} on the SDE "
                              f"{start_sde.config()}, but the options build {model.config()} on "
                              f"{sde.config()}; give the options it was trained with")
    model.load_state_dict(start.state_dict())
    return {"init": {"name": name, "sha256": json.loads(
        (CHECKPOINT_DIR / f"{name}.json").read_text())["sha256"]}}


def run_description(device: torch.device, history: list[dict], argv=None) -> dict:
    """Provenance and wall time of a training run, for its exported log."""
    return {**provenance(device, "python -m sdelib.train", argv),
            "wall_seconds": round(sum(entry["seconds"] for entry in history), 1)}


_HELP = {
    "epochs": "passes over the training images",
    "lr": "peak learning rate of Adam (after the warm-up)",
    "schedule": "cosine | constant, after the linear warm-up",
    "eps": "smallest diffusion time of the training draws",
    "weighting": "std2 (the tutorial's) | likelihood (g^2) | flow_matching (g^4 / 4) | edm "
                 "(Karras et al. 2022: ln sigma~ normal, weight 1 + sigma~^2 / sigma_data^2)",
    "sigma_data": "the data's std for the edm weighting and a denoiser net's preconditioning",
    "importance_sampling": "t with density g^2/v (likelihood weighting): ln sigma~^2 uniform",
    "dequantize": "train on uniformly dequantised images (255 x + u) / 256",
    "seed": "seed of the net's initialisation, the batches and the noise",
    "batch_size": "images per step (all processes together)",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "ema_decay": "decay of the exponential moving average of the weights",
    "grad_clip": "largest gradient norm (0: no clipping)",
    "bf16": "bf16 autocast for the forward and backward passes",
    "channels_last": "channels-last memory format (faster convolutions on CPU)",
    "compile": "torch.compile the net",
}


_CHOICES = {"schedule": SCHEDULES, "weighting": WEIGHTINGS}


def _add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """One --option per training setting, its default read from `train`'s signature."""
    parameters = inspect.signature(train).parameters
    for name in TRAINING_SETTINGS:
        default = parameters[name].default
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=_HELP.get(name))
        else:
            parser.add_argument(flag, type=type(default), default=default,
                                choices=_CHOICES.get(name),
                                help=f"{_HELP.get(name, name)} (default {default})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdelib.train", description=__doc__.split("\n")[0])
    parser.add_argument("--sde", default="ve", help="ve | ve-geometric | vp | subvp | rf")
    _add_setting_arguments(parser)
    parser.add_argument("--noise-input", default="time", choices=["time", "log_sigma"],
                        help="what ScoreNet's time embedding is fed")
    parser.add_argument("--output", default="score", choices=["score", "velocity", "denoiser"],
                        help="what the U-Net outputs: the score (x 1/std), for flow matching the "
                             "probability-flow velocity, or EDM's preconditioned denoiser")
    parser.add_argument("--class-conditional", action="store_true",
                        help="a class-conditional ScoreNet (classifier-free guidance)")
    parser.add_argument("--label-dropout", type=float, default=0.1,
                        help="probability of the null label per image (class-conditional only)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop (and save) after this many seconds")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--device", default=None, help="cuda | cpu (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--out", required=True, help="checkpoint path (resumed if it exists)")
    parser.add_argument("--init", default=None, metavar="NAME",
                        help="start from the weights of the shipped model NAME (to train it longer, "
                             "with a new learning-rate schedule); the net and SDE options must build "
                             "the same net")
    parser.add_argument("--export", default=None, metavar="NAME",
                        help="when training is complete, export the EMA weights and the training log "
                             "to sdelib/checkpoints/NAME.pt (loaded by load_pretrained(NAME))")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = torch.device(args.device) if args.device else default_device()
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    from .data import load_mnist

    sde = make_sde(args.sde)
    images, labels = load_mnist("train")
    if args.subset:
        images, labels = images[:args.subset], labels[:args.subset]
    torch.manual_seed(args.seed)  # the Fourier features of a new net
    # a log-sigma net normalises its noise input over the noise levels it is trained on
    noise = dict(noise_eps=args.eps) if args.noise_input == "log_sigma" else {}
    model = ScoreNet(sde, noise_input=args.noise_input, **noise,
                     num_classes=10 if args.class_conditional else 0, output=args.output,
                     sigma_data=args.sigma_data)
    init = initialise_from(model, sde, args.init) if args.init else {}
    conditional = dict(labels=labels, label_dropout=args.label_dropout) \
        if args.class_conditional else {}
    try:
        state = train(model, sde, images, device=device, checkpoint=args.out, **conditional,
                      time_budget=args.time_budget, max_steps=args.max_steps,
                      **{name: getattr(args, name) for name in TRAINING_SETTINGS})
        complete = state["step"] == args.epochs * (len(images) // args.batch_size)
        if args.export and complete and _distributed()[0] == 0:
            log = export_pretrained(args.out, CHECKPOINT_DIR / f"{args.export}.pt",
                                    extra_log={**run_description(device, state["history"], argv),
                                               **init})
            print(f"exported {args.export}: {log['file']} sha256 {log['sha256']}")
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()

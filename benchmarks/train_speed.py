"""Training speed: the tutorial's loop against sdelib's fast path, in one process on one machine.

    python benchmarks/train_speed.py --seconds 120                 # images/s of each and the ratio
    python benchmarks/train_speed.py --to-loss 18.0 --eval 2048    # time for each to reach a test DSM loss
    python benchmarks/train_speed.py --to-quality --channels-last
        # time to quality: the tutorial's throughput projected to the epochs its recipe needs
        # for bits/dim <= 3.9 (26, the likelihood chapter's table), against the likelihood recipe
        # (importance-sampled t, ln sigma input, dequantised data) trained until its EMA reaches
        # bits/dim <= 3.9 on the first 256 test images
    python benchmarks/train_speed.py --full-run --device cuda --bf16 --channels-last --compile
        # the GPU check: the tutorial's throughput for --seconds, projected to its 50 epochs, against
        # the fast path's whole --epochs schedule run once (wall time, then its EMA test DSM loss)

The tutorial loop is re-implemented as the score-SDE MNIST tutorial (Song 2021) writes it: torchvision-style MNIST items (PIL image
-> ToTensor per item), DataLoader(batch 32, shuffle, 4 workers), Adam 1e-4, the std^2-weighted DSM
loss, fp32, no EMA. The fast path is `sdelib.train.train`: the dataset resident on the device, batches
by index, larger batch with warm-up + cosine, EMA, and optionally bf16 / channels_last / compile.
Results are printed and written as JSON (machine, command, date) to sdelib/results/.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from sdelib.data import load_mnist
from sdelib.likelihood import dataset_bpd, dequantize, make_probe
from sdelib.losses import dsm_loss
from sdelib.metrics import dsm_test_loss
from sdelib.nets import ScoreNet
from sdelib.sde import VESDE
from sdelib.device import default_device
from sdelib.pretrained import model_from_checkpoint
from sdelib.provenance import RESULTS_DIR, provenance, write_result
from sdelib.metrics import mean_and_standard_error
from sdelib.train import train

RESULTS = RESULTS_DIR


class TutorialMNIST(Dataset):
    """What torchvision's MNIST + ToTensor() does per item: uint8 array -> PIL -> float tensor."""

    def __init__(self, images_uint8):
        self.images = images_uint8

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        picture = Image.fromarray(self.images[i], mode="L")
        return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None], 0


def tutorial_loop(images, device, seconds=None, target=None, evaluate=None, eval_every=None):
    """The tutorial's training loop; returns (images per second, seconds to target or None)."""
    torch.manual_seed(0)
    sde = VESDE(25.0)
    model = ScoreNet(sde).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(TutorialMNIST((images[:, 0] * 255).round().to(torch.uint8).numpy()),
                        batch_size=32, shuffle=True, num_workers=4, persistent_workers=True)
    seen, start, next_eval = 0, time.perf_counter(), eval_every
    while True:
        for x, _ in loader:
            loss = dsm_loss(model, sde, x.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += x.shape[0]
            elapsed = time.perf_counter() - start
            if target is not None and elapsed >= next_eval:
                if evaluate(model, sde) <= target:
                    return seen / elapsed, elapsed
                next_eval += eval_every
            if seconds is not None and elapsed >= seconds:
                return seen / elapsed, None


def fast_path(images, device, args, seconds=None, target=None, evaluate=None):
    """sdelib.train.train in slices of `eval_every` seconds (resuming its own checkpoint)."""
    torch.manual_seed(0)
    sde = VESDE(25.0)
    model = ScoreNet(sde)
    options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device,
                   bf16=args.bf16, channels_last=args.channels_last, compile=args.compile, progress=False)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "fast.pt"
        start, budget = time.perf_counter(), (seconds if target is None else args.eval_every)
        while True:
            state = train(model, sde, images, checkpoint=checkpoint, time_budget=budget, **options)
            elapsed = time.perf_counter() - start
            seen = state["step"] * args.batch_size
            if target is not None:
                ema, _ = model_from_checkpoint(state, map_location=device)
                if evaluate(ema.to(device), sde) <= target:
                    return seen / elapsed, elapsed
            elif elapsed >= seconds:
                return seen / elapsed, None
            if state["step"] >= args.epochs * (len(images) // args.batch_size):
                return seen / elapsed, None


# The tutorial recipe's bits/dim (64 test images, the likelihood chapter's table): 4.80 after 10
# epochs, 3.88 after 26, so bits/dim <= 3.9 takes it 26 epochs.
TUTORIAL_EPOCHS_TO_BPD = 26


def bpd_of(model, sde, test_images, device, tolerance, seed=0):
    """Bits/dim of `model` on the test images (uniform dequantisation and Gaussian probe from
    `seed`, adaptive solver at `tolerance`): (mean, standard error)."""
    generator = torch.Generator().manual_seed(seed)
    x = dequantize(test_images, generator)
    probe = make_probe(x, "gaussian", generator)
    result = dataset_bpd(model, sde, x, probe, batch_size=len(x), device=device,
                         solver="torchdiffeq", eps=1e-5, rtol=tolerance, atol=tolerance,
                         progress=False)
    estimate = mean_and_standard_error(result.bpd.double())
    return estimate.mean, estimate.standard_error


def fast_to_bpd(images, test_images, device, args):
    """The likelihood recipe trained in slices of `eval_every` seconds (resuming its checkpoint);
    after each slice its EMA's bits/dim. Returns (training seconds to the target or None,
    images/s while training, the trace of (training seconds, step, bpd, SE))."""
    torch.manual_seed(0)
    sde = VESDE(25.0)
    model = ScoreNet(sde, noise_input="log_sigma")
    options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=device,
                   weighting="likelihood", importance_sampling=True, dequantize=True,
                   bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                   progress=False)
    trace, training_seconds = [], 0.0
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "fast.pt"
        while True:
            start = time.perf_counter()
            state = train(model, sde, images, checkpoint=checkpoint, time_budget=args.eval_every,
                          **options)
            training_seconds += time.perf_counter() - start
            ema, _ = model_from_checkpoint(state, map_location=device)
            bpd, standard_error = bpd_of(ema.to(device).requires_grad_(False), sde, test_images,
                                         device, args.bpd_tolerance)
            trace.append({"training_seconds": training_seconds, "step": state["step"],
                          "bpd": bpd, "bpd_standard_error": standard_error})
            print(f"  fast path: step {state['step']}, {training_seconds:.0f} s of training: "
                  f"{bpd:.3f} ± {standard_error:.3f} bits/dim", flush=True)
            rate = state["step"] * args.batch_size / training_seconds
            if bpd <= args.bpd_target:
                return training_seconds, rate, trace
            if state["step"] >= args.epochs * (len(images) // args.batch_size):
                return None, rate, trace


def report_to_quality(images, device, args):
    test_images = load_mnist("test")[0][: args.bpd_images]
    tutorial_rate, _ = tutorial_loop(images, device, seconds=args.seconds)
    tutorial_seconds = TUTORIAL_EPOCHS_TO_BPD * len(images) / tutorial_rate
    fast_seconds, fast_rate, trace = fast_to_bpd(images, test_images, device, args)
    write(device, args, f"train_speed_{device.type}_to_quality.json", {
        "tutorial_images_per_s": tutorial_rate,
        "tutorial_epochs_to_bpd": TUTORIAL_EPOCHS_TO_BPD,
        "tutorial_projected_seconds_to_bpd": tutorial_seconds,
        "fast_recipe": "importance-sampled t, likelihood weighting, ln sigma input, dequantised",
        "fast_images_per_s": fast_rate, "throughput_ratio": fast_rate / tutorial_rate,
        "bpd_target": args.bpd_target, "bpd_images": len(test_images),
        "fast_seconds_to_bpd": fast_seconds,
        "speedup_to_bpd": None if fast_seconds is None else tutorial_seconds / fast_seconds,
        "fast_trace": trace,
    })


def full_run(images, device, args, evaluate):
    """The fast path's whole schedule once: (seconds, images/s, EMA test DSM loss (mean, SE), history)."""
    torch.manual_seed(0)
    sde = VESDE(25.0)
    model = ScoreNet(sde)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        state = train(model, sde, images, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      device=device, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                      checkpoint=Path(folder) / "fast.pt", checkpoint_every=1e9)
        seconds = time.perf_counter() - start
    ema, _ = model_from_checkpoint(state, map_location=device)
    loss = dsm_test_loss(ema.to(device), sde, evaluate.images, device=device)
    return seconds, state["step"] * args.batch_size / seconds, (loss.mean, loss.standard_error), state["history"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="throughput run length per path")
    parser.add_argument("--to-loss", type=float, default=None, help="time each path to this test DSM loss")
    parser.add_argument("--eval", type=int, default=2048, help="test images for the DSM loss")
    parser.add_argument("--eval-every", type=float, default=60.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--full-run", action="store_true",
                        help="tutorial throughput projected to 50 epochs vs the fast path's whole schedule")
    parser.add_argument("--to-quality", action="store_true",
                        help="tutorial projected to bits/dim <= --bpd-target vs the likelihood recipe")
    parser.add_argument("--bpd-target", type=float, default=3.9)
    parser.add_argument("--bpd-images", type=int, default=256)
    parser.add_argument("--bpd-tolerance", type=float, default=2e-3)
    parser.add_argument("--train-images", type=int, default=None, help="use only the first N (smoke tests)")
    parser.add_argument("--out", type=Path, default=None, help="JSON to write (default: results/train_speed_*.json)")
    args = parser.parse_args()

    device = torch.device(args.device) if args.device else default_device()
    images = load_mnist("train")[0][: args.train_images]
    test_images = load_mnist("test")[0][: args.eval]

    def evaluate(model, sde):
        return dsm_test_loss(model, sde, test_images, device=device).mean
    evaluate.images = test_images

    if args.full_run:
        return report_full_run(images, device, args, evaluate)
    if args.to_quality:
        return report_to_quality(images, device, args)

    target = args.to_loss
    seconds = None if target is not None else args.seconds
    tutorial_rate, tutorial_time = tutorial_loop(images, device, seconds, target, evaluate, args.eval_every)
    fast_rate, fast_time = fast_path(images, device, args, seconds, target, evaluate)
    write(device, args, f"train_speed_{device.type}{'_to_loss' if target else ''}.json", {
        "tutorial_images_per_s": tutorial_rate, "fast_images_per_s": fast_rate,
        "throughput_ratio": fast_rate / tutorial_rate,
        "tutorial_seconds_to_loss": tutorial_time, "fast_seconds_to_loss": fast_time,
    })


def report_full_run(images, device, args, evaluate):
    tutorial_rate, _ = tutorial_loop(images, device, seconds=args.seconds)
    tutorial_50_epochs = 50 * 60_000 / tutorial_rate
    seconds, rate, (loss, loss_se), history = full_run(images, device, args, evaluate)
    bound = 18.0 if args.to_loss is None else args.to_loss
    write(device, args, f"train_speed_{device.type}_full_run.json", {
        "tutorial_images_per_s": tutorial_rate,
        "tutorial_projected_seconds_50_epochs": tutorial_50_epochs,
        "fast_images_per_s": rate, "fast_seconds": seconds, "fast_epochs": args.epochs,
        "fast_test_dsm_loss": loss, "fast_test_dsm_loss_standard_error": loss_se,
        "loss_bound": bound, "fast_meets_bound": loss <= bound,
        "speedup_to_loss": tutorial_50_epochs / seconds, "throughput_ratio": rate / tutorial_rate,
        "fast_history": history,
    })


def write(device, args, default_name, figures):
    """Print the figures and write them with the machine, command and date to --out (default:
    results/<default_name>)."""
    result = {**provenance(device, "python benchmarks/train_speed.py"), "platform": platform.platform(),
              "settings": vars(args), **figures}
    print(json.dumps({k: v for k, v in result.items() if k not in ("fast_history", "fast_trace")},
                     indent=1, default=str))
    write_result(json.loads(json.dumps(result, default=str)), args.out or RESULTS / default_name)


if __name__ == "__main__":
    main()

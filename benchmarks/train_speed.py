"""Training speed: the tutorial's loop against sdelib's fast path, in one process on one machine.

    python benchmarks/train_speed.py --seconds 120                 # images/s of each and the ratio
    python benchmarks/train_speed.py --to-loss 18.0 --eval 2048    # time for each to reach a test DSM loss
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
from sdelib.losses import dsm_loss
from sdelib.metrics import dsm_test_loss
from sdelib.nets import ScoreNet
from sdelib.sde import VESDE
from sdelib.device import default_device
from sdelib.pretrained import model_from_checkpoint
from sdelib.provenance import RESULTS_DIR, provenance, write_result
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
    print(json.dumps({k: v for k, v in result.items() if k != "fast_history"}, indent=1, default=str))
    write_result(json.loads(json.dumps(result, default=str)), args.out or RESULTS / default_name)


if __name__ == "__main__":
    main()

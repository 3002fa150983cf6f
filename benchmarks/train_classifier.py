"""Train the MNIST classifiers shipped with sdelib.

    python benchmarks/train_classifier.py [--epochs 8] [--threads 2]
    python benchmarks/train_classifier.py --noise-conditional [--epochs 8]

The first trains `nets.MNISTClassifier`, the *evaluation* classifier, on the 60k training images
with `train.train_classifier`, reports its accuracy on the 10k test images (>= 99 % to ship), and
exports it with its sha256 and training log to sdelib/checkpoints/mnist-classifier.{pt,json}. Its
penultimate features define the Fréchet distance of `metrics` (not Inception FID: see
sdelib/metrics.py), and it judges class-conditional samples.

The second trains `nets.NoiseConditionalClassifier` on images perturbed by the VE SDE (sigma 25)
at t ~ U(1e-3, 1), the *guiding* classifier of `controllable.classifier_guided_score`, and exports it
to sdelib/checkpoints/mnist-noisy-classifier.{pt,json} (>= 97 % on clean test images to ship).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdelib.data import load_mnist
from sdelib.nets import MNISTClassifier, NoiseConditionalClassifier
from sdelib.sde import VESDE
from sdelib.device import default_device
from sdelib.metrics import classifier_accuracy
from sdelib.pretrained import CHECKPOINT_DIR, export_pretrained, save_checkpoint
from sdelib.provenance import machine_description, provenance
from sdelib.train import train_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-conditional", action="store_true")
    parser.add_argument("--shift", type=int, default=2, help="random translations of up to this many pixels")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    torch.manual_seed(args.seed)
    start = time.monotonic()
    sde = VESDE(25.0) if args.noise_conditional else None
    model = NoiseConditionalClassifier(sde) if sde is not None else MNISTClassifier()
    state = train_classifier(model, train_images, train_labels, epochs=args.epochs, seed=args.seed,
                             device=device, test=(test_images, test_labels), sde=sde, shift=args.shift)
    wall = time.monotonic() - start
    if sde is None:
        accuracy, required, name, extra = classifier_accuracy(model, test_images, test_labels), 0.99, "mnist-classifier", {}
    else:
        accuracy, required, name = classifier_accuracy(model, test_images, test_labels, t=1e-3), 0.97, "mnist-noisy-classifier"
        extra = {f"test_accuracy_t{t}": classifier_accuracy(model, test_images, test_labels, t=t, sde=sde)
                 for t in (0.1, 0.3, 0.5, 0.7, 1.0)}
    print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs, {wall:.0f} s on {machine_description(device)}; {extra}")
    if accuracy < required:
        sys.exit(f"test accuracy {accuracy:.4f} is below the {required} required to ship; train longer")
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(state, Path(folder) / "classifier.pt")
        log = export_pretrained(Path(folder) / "classifier.pt", CHECKPOINT_DIR / f"{name}.pt",
                                extra_log={"test_accuracy": accuracy, **extra, "wall_seconds": round(wall, 1),
                                           **provenance(device, "python benchmarks/train_classifier.py", argv)})
    print(f"exported {log['file']} sha256 {log['sha256']}")


if __name__ == "__main__":
    main()

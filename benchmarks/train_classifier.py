"""Train the MNIST evaluation classifier shipped with sdelib (`load_pretrained("mnist-classifier")`).

    python benchmarks/train_classifier.py [--epochs 4] [--threads 2]

Trains `nets.MNISTClassifier` on the 60k training images with `train.train_classifier`, reports
its accuracy on the 10k test images, and exports the weights with their sha256 and training log
to sdelib/checkpoints/mnist-classifier.{pt,json}. Its penultimate features define the Fréchet
distance of `metrics` (not Inception FID: see sdelib/metrics.py).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from sdelib.data import load_mnist
from sdelib.nets import MNISTClassifier
from sdelib.train import (CHECKPOINT_DIR, classifier_accuracy, default_device, export_pretrained,
                          machine_description, save_checkpoint, train_classifier)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    torch.manual_seed(args.seed)
    start = time.monotonic()
    state = train_classifier(MNISTClassifier(), train_images, train_labels, epochs=args.epochs,
                             seed=args.seed, device=device, test=(test_images, test_labels))
    wall = time.monotonic() - start
    model = MNISTClassifier().to(device)
    model.load_state_dict(state["model"])
    accuracy = classifier_accuracy(model, test_images, test_labels)
    print(f"test accuracy {accuracy:.4f} after {args.epochs} epochs, {wall:.0f} s on {machine_description(device)}")
    if accuracy < 0.99:
        sys.exit(f"test accuracy {accuracy:.4f} is below the 0.99 required to ship; train longer")
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(state, Path(folder) / "classifier.pt")
        log = export_pretrained(Path(folder) / "classifier.pt", CHECKPOINT_DIR / "mnist-classifier.pt",
                                extra_log={"test_accuracy": accuracy, "machine": machine_description(device),
                                           "torch": torch.__version__, "wall_seconds": round(wall, 1),
                                           "command": "python benchmarks/train_classifier.py " + " ".join(sys.argv[1:])})
    print(f"exported {log['file']} sha256 {log['sha256']}")


if __name__ == "__main__":
    main()

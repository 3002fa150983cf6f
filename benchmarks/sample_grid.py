"""A 64-digit sample grid of the shipped model, as evidence of what it generates.

    python benchmarks/sample_grid.py [--steps 500] [--seed 0]

Euler–Maruyama with the tutorial's settings (500 steps, eps = 1e-3) from `load_pretrained("mnist-ve")`;
writes sdelib/results/mnist-ve-em-samples.png (8 x 8 digits, clamped to [0, 1]) and a JSON
sidecar with the command, machine, wall time and the evaluation classifier's class balance.
"""
import argparse
import json
import time

import torch

from sdelib.metrics import class_balance
from sdelib.samplers import euler_maruyama
from sdelib.device import default_device
from sdelib.pretrained import CHECKPOINT_DIR, load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result
from sdelib.viz import save_image_grid

RESULTS = RESULTS_DIR


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = default_device()
    model, sde = load_pretrained("mnist-ve", map_location=device)
    start = time.perf_counter()
    with torch.no_grad():
        samples, nfe = euler_maruyama(model, sde, (64, 1, 28, 28), steps=args.steps,
                                      generator=torch.Generator(device=device).manual_seed(args.seed))
    seconds = time.perf_counter() - start
    samples = samples.clamp(0, 1).cpu()
    RESULTS.mkdir(parents=True, exist_ok=True)
    save_image_grid(samples, RESULTS / "mnist-ve-em-samples.png", nrow=8)
    report = {**provenance(device, "python benchmarks/sample_grid.py", argv), "seconds": seconds,
              "nfe": nfe, "model_sha256": json.loads((CHECKPOINT_DIR / "mnist-ve.json").read_text())["sha256"]}
    if (CHECKPOINT_DIR / "mnist-classifier.pt").exists():
        classifier, _ = load_pretrained("mnist-classifier")
        report["class_balance"] = [round(v, 4) for v in class_balance(classifier, samples).tolist()]
    write_result(report, RESULTS / "mnist-ve-em-samples.json")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Classifier-free guidance against classifier guidance, per guidance strength w.

    python benchmarks/guidance.py [--samples 500] [--strengths 0 1 2 4] [--seed 0] [--threads 2]

For each kind of guidance and each strength w (one convention, `sdelib.controllable`: w = 0 the
unconditional model, w = 1 the conditional one), --samples digits are drawn for the labels
0, 1, ..., 9, 0, 1, ... with the best <= 50-NFE sampler of the sampler sweep (the one
benchmarks/model_scores.py uses) and judged by the evaluation classifier `mnist-classifier`, which
neither guide has seen:
- accuracy: the fraction the classifier labels as asked (binomial standard error);
- Fréchet distance of the classifier's features against the 10,000 test images (bootstrap SE):
  guidance trades diversity for fidelity, and the distance shows the price.
Classifier-free: `mnist-ve-cfg` (one class-conditional ScoreNet, null label for "no class").
Classifier guidance: `mnist-ve` with `mnist-noisy-classifier`. Writes sdelib/results/guidance.json
with the machine, command and date; the controllable-generation chapter reads it.
"""
import argparse
import math
import time

import torch

from sdelib.controllable import classifier_free_guided_score, classifier_guided_score
from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.metrics import bootstrap_standard_error, classifier_features, frechet_distance
from sdelib.pretrained import load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result
from sdelib.samplers import dpm_solver_sde

from model_scores import SAMPLER   # the same <= 50-NFE sampler as every shipped model's FD

RESULTS = RESULTS_DIR / "guidance.json"


def guided_scores(device):
    """kind -> (a function w, labels -> guided score_fn, what the kind costs per evaluation)."""
    cfg_model, _ = load_pretrained("mnist-ve-cfg", map_location=device)
    model, _ = load_pretrained("mnist-ve", map_location=device)
    guide, _ = load_pretrained("mnist-noisy-classifier", map_location=device)
    for net in (cfg_model, model, guide):
        net.requires_grad_(False)
    return {
        "classifier-free": (lambda w, labels: classifier_free_guided_score(cfg_model, labels, w),
                            "two passes of the class-conditional net (one for w = 0 or 1)"),
        "classifier": (lambda w, labels: classifier_guided_score(model, guide, labels, w),
                       "one pass of the net, one forward and backward pass of the classifier"),
    }


def measure(score_fn, sde, labels, judge, reference, seed, device, batch):
    settings = {k: v for k, v in SAMPLER.items() if k != "name"}
    parts, start = [], time.perf_counter()
    for i, first in enumerate(range(0, len(labels), batch)):
        chunk = labels[first:first + batch].to(device)
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + i)
        with torch.no_grad():
            result = dpm_solver_sde(score_fn(chunk), sde, (len(chunk), 1, 28, 28),
                                    generator=generator, **settings)
        parts.append(result.samples.float().clamp(0, 1).cpu())
    samples = torch.cat(parts)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        predicted = torch.cat([judge(samples[i:i + 500].to(device)).argmax(1).cpu()
                               for i in range(0, len(samples), 500)])
    accuracy = (predicted == labels).double().mean().item()
    features = classifier_features(judge, samples)
    return {"accuracy": accuracy,
            "accuracy_standard_error": math.sqrt(accuracy * (1 - accuracy) / len(labels)),
            "frechet": frechet_distance(features, reference),
            "frechet_standard_error": bootstrap_standard_error(
                frechet_distance, features, reference, n_boot=20,
                generator=torch.Generator().manual_seed(seed)),
            "nfe": result.nfe, "seconds": round(seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    judge, _ = load_pretrained("mnist-classifier", map_location=device)
    judge.eval()
    reference = classifier_features(judge, load_mnist("test")[0])
    _, sde = load_pretrained("mnist-ve")
    labels = torch.arange(args.samples) % 10
    report = {**provenance(device, "python benchmarks/guidance.py", argv),
              "samples": args.samples, "labels": "0, 1, ..., 9 repeated", "sampler": SAMPLER,
              "judge": "mnist-classifier (features and labels)",
              "reference": "the 10,000 MNIST test images", "kinds": {}}
    for kind, (make, cost) in guided_scores(device).items():
        rows = []
        for w in args.strengths:
            row = {"strength": w, **measure(lambda y: make(w, y), sde, labels, judge, reference,
                                            args.seed, device, args.batch)}
            rows.append(row)
            print(f"{kind:>15} w = {w:g}: accuracy {row['accuracy']:.3f} ± "
                  f"{row['accuracy_standard_error']:.3f}, Fréchet distance {row['frechet']:.1f} ± "
                  f"{row['frechet_standard_error']:.1f} ({row['seconds']:.0f} s)", flush=True)
        report["kinds"][kind] = {"cost_per_evaluation": cost, "rows": rows}
    write_result(report, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

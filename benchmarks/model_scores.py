"""Every shipped score model measured the same way: bits/dim and Fréchet distance.

    python benchmarks/model_scores.py --model mnist-ve-is [--bpd-images 1000] [--fd-samples 1000]
                                      [--tolerance 1e-5] [--seed 0] [--threads 2]

- Bits/dim of the first --bpd-images MNIST test images: uniformly dequantised, one Gaussian
  Hutchinson probe per image, both drawn up front from --seed (`likelihood.dataset_bpd`, torchdiffeq
  dopri5 at rtol = atol = --tolerance, from the model's training eps: 1e-5 for the VE models);
  mean ± standard error and every image's value.
- Fréchet distance (in the shipped classifier's features, not Inception FID) of --fd-samples samples
  against the 10,000 test images, with the best <= 50-NFE sampler of the sampler sweep
  (SDE-DPM-Solver++(2M), eta 6, 49 steps + a Tweedie step), bootstrap standard error. Every SDE
  stops at the same noise level, sigma~ = 0.032 (the VE tutorial's t = 1e-3).
A class-conditional net is called without a label, so both measure its null label's model, the
unconditional one it learns alongside (classifier-free guidance).
Writes the model's entry of sdelib/results/models.json (keeping the other models' entries), with the
machine, command and date; the likelihood chapter reads it.
"""
import argparse
import json
import time

import torch

from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.likelihood import dataset_bpd, dequantize, make_probe
from sdelib.metrics import (bootstrap_standard_error, classifier_features, frechet_distance,
                            mean_and_standard_error)
from sdelib.pretrained import CHECKPOINT_DIR, load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result
from sdelib.samplers import dpm_solver_sde
from sdelib.sde import VESDE

RESULTS = RESULTS_DIR / "models.json"
CHECK_IMAGES = 4
SAMPLER = {"name": "DPM-Solver++ SDE + Tweedie", "steps": 49, "order": 2, "eta": 6.0, "denoise": True}


# The check images: bits/dim that any machine recomputes to well within CHECK_BOUND. The big run
# uses float32 at a loose tolerance, where another CPU's round-off changes the adaptive solver's
# steps and so moves a figure by up to the solver's error (0.045 bits/dim seen at 2e-3). In float64
# at rtol = atol = 1e-6 round-off is ~1e-12 and the solver's own error is below 4.2e-4 bits/dim
# (mnist-ve-is, 4 images: 1e-6 against 1e-7), so two machines agree within 2 x 4.2e-4 even where
# their steps differ; another seed's dequantisation and probes move a figure by ~0.05.
CHECK = {"images": 2, "dtype": "float64", "tolerance": 1e-6}
CHECK_BOUND = 2e-3


def check_bpd(model, sde, x, probe, eps):
    """Bits/dim of the first CHECK["images"] of the dequantised x with their probes, in float64 at
    CHECK["tolerance"] (the model is cast to float64 and back)."""
    k, tolerance = CHECK["images"], CHECK["tolerance"]
    device = next(model.parameters()).device
    model.double()
    try:
        result = dataset_bpd(model, sde, x[:k], probe[:k], batch_size=k, device=device,
                             dtype=torch.float64, solver="torchdiffeq", eps=eps, rtol=tolerance,
                             atol=tolerance, progress=False)
    finally:
        model.float()
    return result.bpd.tolist()


def bpd_entry(model, sde, images, seed, tolerance, batch, device, eps):
    generator = torch.Generator().manual_seed(seed)
    x = dequantize(images, generator)
    probe = make_probe(x, "gaussian", generator)
    result = dataset_bpd(model, sde, x, probe, batch_size=batch, device=device, solver="torchdiffeq",
                         eps=eps, rtol=tolerance, atol=tolerance, desc="bits/dim")
    estimate = mean_and_standard_error(result.bpd.double())
    return {"check": {**CHECK, "bpd": check_bpd(model, sde, x, probe, eps)},
            "bpd_mean": estimate.mean, "bpd_standard_error": estimate.standard_error,
            "n": estimate.n, "seed": seed, "tolerance": tolerance, "eps": eps, "batch": batch,
            "images": f"the first {estimate.n} MNIST test images", "seconds": result.seconds,
            "bpd": [round(v, 6) for v in result.bpd.tolist()]}


def recheck(name):
    """Recompute the check images of `name`'s entry in models.json (the rest stays as measured)."""
    report = json.loads(RESULTS.read_text())
    likelihood = report[name]["likelihood"]
    model, sde = load_pretrained(name)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(likelihood["seed"])
    x = dequantize(load_mnist("test")[0][:likelihood["n"]], generator)
    probe = make_probe(x, "gaussian", generator)
    likelihood.pop("check_bpd", None)
    # entries measured before the eps was logged were measured from the model's training eps
    log = json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())
    likelihood.setdefault("eps", log["settings"]["eps"])
    likelihood["check"] = {**CHECK, "bpd": check_bpd(model, sde, x, probe, likelihood["eps"])}
    write_result(report, RESULTS)
    return likelihood["check"]


def sampling_eps(sde):
    """The time at which sde's noise level is the VE tutorial's at t = 1e-3 (sigma~ = 0.032): the
    samplers of every SDE stop at the same noise."""
    end = VESDE(25.0).scaled_std(torch.tensor(1e-3, dtype=torch.float64))
    return float(f"{float(sde.time_of_scaled_std(end)):.6g}")  # VE: 0.001, VP: 0.0062011


def fd_entry(model, sde, n, seed, device, batch=500):
    classifier, _ = load_pretrained("mnist-classifier", map_location=device)
    reference = classifier_features(classifier, load_mnist("test")[0])
    settings = {k: v for k, v in SAMPLER.items() if k != "name"}
    settings["eps"] = sampling_eps(sde)
    parts, start = [], time.perf_counter()
    for i, first in enumerate(range(0, n, batch)):
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + i)
        with torch.no_grad():
            result = dpm_solver_sde(model, sde, (min(batch, n - first), 1, 28, 28),
                                    generator=generator, **settings)
        parts.append(result.samples.float().clamp(0, 1).cpu())
    features = classifier_features(classifier, torch.cat(parts))
    return {"frechet": frechet_distance(features, reference),
            "frechet_standard_error": bootstrap_standard_error(
                frechet_distance, features, reference, n_boot=20,
                generator=torch.Generator().manual_seed(seed)),
            "n": n, "sampler": {**SAMPLER, "eps": settings["eps"]}, "nfe": result.nfe,
            "seconds": time.perf_counter() - start}


def merge(path, name, entry):
    """models.json with `name`'s entry replaced, the other models' kept."""
    report = json.loads(path.read_text()) if path.exists() else {}
    report[name] = entry
    return write_result(report, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--bpd-images", type=int, default=1000)
    parser.add_argument("--fd-samples", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--recheck", action="store_true",
                        help="only recompute the model's check images (float64, tight tolerance)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.recheck:
        print(f"{args.model}: check images {recheck(args.model)['bpd']}")
        return
    device = default_device()
    model, sde = load_pretrained(args.model, map_location=device)
    model.requires_grad_(False)
    log = json.loads((CHECKPOINT_DIR / f"{args.model}.json").read_text())
    entry = {**provenance(device, "python benchmarks/model_scores.py", argv),
             "sha256": log["sha256"], "sde": log["sde"], "net": log["net"]}
    entry["likelihood"] = bpd_entry(model, sde, load_mnist("test")[0][:args.bpd_images], args.seed,
                                    args.tolerance, args.batch, device, log["settings"]["eps"])
    print(f"{args.model}: {entry['likelihood']['bpd_mean']:.3f} ± "
          f"{entry['likelihood']['bpd_standard_error']:.3f} bits/dim", flush=True)
    if args.fd_samples:
        entry["samples"] = fd_entry(model, sde, args.fd_samples, args.seed, device)
        print(f"{args.model}: Fréchet distance {entry['samples']['frechet']:.2f} ± "
              f"{entry['samples']['frechet_standard_error']:.2f}", flush=True)
    merge(RESULTS, args.model, entry)
    print(f"wrote {args.model} into {RESULTS}")


if __name__ == "__main__":
    main()

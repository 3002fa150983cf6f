"""Bits/dim of MNIST test images by the probability-flow ODE: the tutorial's path against sdelib's.

    python benchmarks/likelihood_speed.py [--compare 256] [--subset 1000] [--batch 500] [--threads 2]

- Comparison (`--compare` images): the tutorial's path, scipy RK45 on batches of 32 in float64
  (`ode_likelihood(..., solver="scipy")`), and the fast path, torchdiffeq dopri5 on one large batch
  on the device (`solver="torchdiffeq"`), with the same rtol = atol = 1e-5, the same dequantised
  images and the same Gaussian Hutchinson probe per image. Prints images/s of each, the ratio, and
  the bpd of each (they must agree within 0.01 bpd).
- Evaluation (`--subset` images, first of the test set; the full 10k with a GPU): the fast path's
  bpd, mean ± standard error.
Writes sdelib/results/likelihood_speed.json (machine, command, date, and the figures above:
bpd_mean, bpd_standard_error, n, ...). The likelihood chapter reads it.

    python benchmarks/likelihood_speed.py --full-test-set [--batch 500] [--resume]
                                          [--model mnist-ve-is --tolerance 2e-3]

- The whole test set (10,000 images) with the fast path from the model's training eps, no
  comparison: one dequantisation and one probe per image drawn up front from `--seed`, then batch
  after batch; the per-image bpd are written
  to sdelib/results/likelihood_full.json after every batch (with `complete`, the running mean
  ± standard error and the seconds spent), and `--resume` continues a run with the same seed and
  batch (identical images, probes and batches), so an interrupted CPU run (about 2 hours on 2
  cores) loses at most one batch. On a GPU it is one ~minute run. `--model` measures another shipped
  model (written to likelihood_full_<model>.json) and `--tolerance` sets rtol = atol (default
  1e-5; 2e-3 is the tolerance the --tolerance-check accepted, bpd within 0.01). `--band K` measures
  the model whose net sees each pixel only within K noise stds of [0, 1] (`likelihood.within_band`;
  written to likelihood_full_<model>-band<K>.json).

    python benchmarks/likelihood_speed.py --tolerance-check 256 --fast-tol 1e-3 [--batch 256]

- Fewer evaluations at the same accuracy: on the first N test images, the tutorial's path (scipy RK45,
  rtol = atol = 1e-5, batches of 32) against the fast path at a looser tolerance (torchdiffeq dopri5,
  rtol = atol = --fast-tol, one batch), same images and probes. Records images/s of each, the ratio,
  the NFE, and the paired change of the bpd (mean ± SE, largest per image) as "tolerance_check" in
  likelihood_speed.json, keeping that file's other figures. The looser tolerance is acceptable when
  the mean moves by at most 0.01 bpd.

    python benchmarks/likelihood_speed.py --bf16-check 32 [--batch 32]

- Whether bf16 may be used: the fast path on the first N test images twice, the score network in
  float32 and under bf16 autocast (the ODE state, the solver and the divergence sum stay float32),
  same images and probes. Records each bpd, NFE and seconds, the paired difference, and the verdict
  (bf16 only if it leaves the figure unchanged: |mean difference| <= 0.001 bpd, a tenth of the
  0.01 agreement asked of the fast path, *and* it is faster here) as "bf16_check" in likelihood_speed.json,
  keeping that file's other figures.
"""
import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.likelihood import dataset_bpd, dequantize, make_probe, within_band
from sdelib.metrics import mean_and_standard_error
from sdelib.pretrained import load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result

RESULTS = RESULTS_DIR / "likelihood_speed.json"
FULL_RESULTS = RESULTS_DIR / "likelihood_full.json"
TOLERANCE = dict(rtol=1e-5, atol=1e-5, eps=1e-5)
BF16_UNCHANGED = 0.001   # bpd: the largest mean change of the figure that still counts as unchanged


def bpd_of(model, sde, x, probe, solver, batch, device, dtype, desc, tolerances=TOLERANCE):
    """bpd of the dequantised images x with fixed probes, in batches: (bpd, seconds, NFE per batch).
    `model` is any score function (the bf16 check passes a wrapped network)."""
    result = dataset_bpd(model, sde, x, probe, batch_size=batch, device=device, dtype=dtype,
                         desc=desc, solver=solver, **tolerances)
    return result.bpd, result.seconds, result.nfe


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", type=int, default=256, help="images for the scipy vs fast comparison")
    parser.add_argument("--subset", type=int, default=1000, help="test images for the bpd estimate (10000: all)")
    parser.add_argument("--batch", type=int, default=500, help="batch of the fast path")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-test-set", action="store_true",
                        help="only the fast path's bpd of all 10,000 test images, resumable (likelihood_full.json)")
    parser.add_argument("--resume", action="store_true", help="with --full-test-set: continue an earlier run")
    parser.add_argument("--model", default="mnist-ve", help="with --full-test-set: the shipped model")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE["rtol"],
                        help="with --full-test-set: rtol = atol of the fast path")
    parser.add_argument("--band", type=float, default=None, metavar="K",
                        help="with --full-test-set: the model within K noise stds of [0, 1] (within_band)")
    parser.add_argument("--bf16-check", type=int, default=0, metavar="N",
                        help="only compare float32 and bf16-autocast networks on N images (into likelihood_speed.json)")
    parser.add_argument("--tolerance-check", type=int, default=0, metavar="N",
                        help="only compare the tutorial's path with the fast path at --fast-tol on N images")
    parser.add_argument("--fast-tol", type=float, default=1e-3, help="rtol = atol of the fast path there")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (the chapter reads the default: likelihood_speed.json, or "
                             "likelihood_full.json with --full-test-set)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = FULL_RESULTS if args.full_test_set else RESULTS
        if args.full_test_set and (args.model != "mnist-ve" or args.band):
            band = f"-band{args.band:g}" if args.band else ""
            args.out = FULL_RESULTS.with_name(f"likelihood_full_{args.model}{band}.json")
    if args.band and not args.full_test_set:
        parser.error("--band goes with --full-test-set")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    model, sde = load_pretrained(args.model if args.full_test_set else "mnist-ve",
                                 map_location=device)
    images, _ = load_mnist("test")
    if args.band:
        model = within_band(model, sde, band=args.band)
    if args.full_test_set:
        return full_test_set(model, sde, images, args, device, argv)
    if args.bf16_check:
        return bf16_check(model, sde, images, args, device, argv)
    if args.tolerance_check:
        return tolerance_check(model, sde, images, args, device, argv)
    n = max(args.compare, args.subset)
    generator = torch.Generator().manual_seed(args.seed)
    x = dequantize(images[:n], generator)                     # one dequantisation ...
    probe = make_probe(x, "gaussian", generator)              # ... and one probe per image, shared

    compare = slice(0, args.compare)
    scipy_bpd, scipy_seconds, _ = bpd_of(model, sde, x[compare], probe[compare], "scipy", 32, device,
                                      torch.float32, "scipy RK45, batch 32")
    fast_bpd, fast_seconds, _ = bpd_of(model, sde, x[compare], probe[compare], "torchdiffeq", args.batch,
                                    device, torch.float32, f"torchdiffeq, batch {args.batch}")
    difference = (fast_bpd.mean() - scipy_bpd.mean()).item()
    report = {
        **provenance(device, "python benchmarks/likelihood_speed.py", argv), "model": "mnist-ve", "tolerances": TOLERANCE,
        "comparison": {
            "n": args.compare,
            "scipy": {"images_per_s": args.compare / scipy_seconds, "seconds": scipy_seconds,
                      "bpd_mean": scipy_bpd.mean().item(), "batch": 32},
            "fast": {"images_per_s": args.compare / fast_seconds, "seconds": fast_seconds,
                     "bpd_mean": fast_bpd.mean().item(), "batch": args.batch},
            "ratio": scipy_seconds / fast_seconds,
            "bpd_difference": difference,
            "max_abs_bpd_difference_per_image": (fast_bpd - scipy_bpd).abs().max().item(),
        },
    }
    print(f"scipy {args.compare / scipy_seconds:.2f} img/s, fast {args.compare / fast_seconds:.2f} img/s: "
          f"ratio {scipy_seconds / fast_seconds:.2f}; bpd {scipy_bpd.mean():.4f} vs {fast_bpd.mean():.4f} "
          f"(difference {difference:+.4f})")

    rest = slice(args.compare, args.subset)
    extra, extra_seconds, _ = (bpd_of(model, sde, x[rest], probe[rest], "torchdiffeq", args.batch, device,
                                      torch.float32, "subset") if args.subset > args.compare else (torch.empty(0), 0.0, []))
    subset_bpd = torch.cat([fast_bpd, extra])[:args.subset]
    estimate = mean_and_standard_error(subset_bpd)
    report.update({"bpd_mean": estimate.mean, "bpd_standard_error": estimate.standard_error, "n": estimate.n,
                   "subset": f"the first {estimate.n} MNIST test images",
                   "subset_seconds": fast_seconds * min(1.0, args.subset / args.compare) + extra_seconds,
                   "tutorial_bpd": {"value": 1.66, "n": 512}})
    print(f"bpd on the first {estimate.n} test images: {estimate}")
    if abs(difference) > 0.01:
        report["warning"] = "scipy and fast paths disagree by more than 0.01 bpd"
    write_result(report, args.out)
    print(f"wrote {args.out}")
    if abs(difference) > 0.01:
        sys.exit(f"scipy and fast bpd differ by {difference:+.4f} > 0.01")


def full_test_set(model, sde, images, args, device, argv):
    """bpd of every test image, batch by batch, the JSON rewritten after each (see the docstring)."""
    generator = torch.Generator().manual_seed(args.seed)
    x = dequantize(images, generator)
    probe = make_probe(x, "gaussian", generator)
    # from the model's own training eps (1e-5 for the VE models trained from there)
    tolerances = dict(TOLERANCE, rtol=args.tolerance, atol=args.tolerance,
                      eps=getattr(model, "trained_eps", None) or TOLERANCE["eps"])
    report = {**provenance(device, "python benchmarks/likelihood_speed.py", argv),
              "model": args.model, **({"band": args.band} if args.band else {}),
              "tolerances": tolerances, "seed": args.seed, "batch": args.batch,
              "images": f"all {len(images)} MNIST test images, in order", "bpd": [], "seconds": 0.0}
    if args.resume and args.out.exists():
        earlier = json.loads(args.out.read_text())
        if [earlier.get(k) for k in ("seed", "batch", "tolerances", "model", "band")] == \
                [args.seed, args.batch, tolerances, args.model, args.band]:
            report.update(bpd=earlier["bpd"], seconds=earlier["seconds"], resumed_on=earlier.get("machine"),
                          **{k: earlier[k] for k in ("note",) if k in earlier})   # a note written by hand
            print(f"resuming after {len(report['bpd'])} images", flush=True)
        else:
            print(f"--resume: {args.out} was made with another seed / batch / tolerances / model; "
                  "starting afresh")
    for first in range(len(report["bpd"]), len(images), args.batch):
        part = slice(first, first + args.batch)
        bpd, seconds, _ = bpd_of(model, sde, x[part], probe[part], "torchdiffeq", args.batch, device,
                                 torch.float32, f"images {first}-{min(first + args.batch, len(images))}",
                                 tolerances)
        report["bpd"] += bpd.tolist()
        report["seconds"] += seconds
        estimate = mean_and_standard_error(torch.tensor(report["bpd"], dtype=torch.float64))
        report.update(n=estimate.n, bpd_mean=estimate.mean, bpd_standard_error=estimate.standard_error,
                      complete=estimate.n == len(images), date=datetime.date.today().isoformat(),
                      images_per_s=estimate.n / report["seconds"])
        write_result(report, args.out, indent=None)   # whole, then renamed: a kill cannot corrupt it
        print(f"{estimate.n} images: bpd {estimate} ({report['seconds']:.0f} s so far)", flush=True)


def merge_into(path, key, check):
    """Write `check` as `key` of the JSON at `path`, keeping that file's other figures."""
    report = json.loads(path.read_text()) if path.exists() else {}
    report[key] = check
    write_result(report, path)
    print(f"wrote {key} into {path}")


def tolerance_check(model, sde, images, args, device, argv):
    """The tutorial's path at 1e-5 against the fast path at --fast-tol (see the docstring)."""
    generator = torch.Generator().manual_seed(args.seed)
    x = dequantize(images[:args.tolerance_check], generator)
    probe = make_probe(x, "gaussian", generator)
    loose = dict(TOLERANCE, rtol=args.fast_tol, atol=args.fast_tol)
    reference = dataset_bpd(model, sde, x, probe, batch_size=32, device=device, solver="scipy",
                            desc="scipy RK45, 1e-5", **TOLERANCE)
    fast = dataset_bpd(model, sde, x, probe, batch_size=args.batch, device=device,
                       solver="torchdiffeq", desc=f"torchdiffeq, {args.fast_tol:g}", **loose)
    change = mean_and_standard_error((fast.bpd - reference.bpd).double())
    check = {**provenance(device, "python benchmarks/likelihood_speed.py", argv), "n": len(x),
             "scipy": {"tolerance": TOLERANCE["rtol"], "batch": 32, "seconds": reference.seconds,
                       "images_per_s": len(x) / reference.seconds, "nfe_per_batch": reference.nfe,
                       "bpd_mean": reference.bpd.mean().item()},
             "fast": {"tolerance": args.fast_tol, "batch": args.batch, "seconds": fast.seconds,
                      "images_per_s": len(x) / fast.seconds, "nfe_per_batch": fast.nfe,
                      "bpd_mean": fast.bpd.mean().item()},
             "ratio": reference.seconds / fast.seconds, "mean_difference": change.mean,
             "difference_standard_error": change.standard_error,
             "max_abs_difference_per_image": (fast.bpd - reference.bpd).abs().max().item(),
             "accepted": abs(change.mean) <= 0.01}
    print(f"scipy 1e-5: {check['scipy']['images_per_s']:.2f} images/s; fast {args.fast_tol:g}: "
          f"{check['fast']['images_per_s']:.2f} images/s; ratio {check['ratio']:.1f}; bpd change "
          f"{change.mean:+.4f} ± {change.standard_error:.4f}")
    merge_into(args.out, "tolerance_check", check)


def bf16_network(model, device: torch.device):
    """The score network under bf16 autocast, its output back in float32 for the solver."""
    def score(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return model(x, t).float()
    return score


def bf16_verdict(fp32_bpd: torch.Tensor, bf16_bpd: torch.Tensor, fp32_seconds: float, bf16_seconds: float) -> dict:
    """Paired change of the bpd by bf16 and whether bf16 may be used (unchanged figure and faster)."""
    change = mean_and_standard_error((bf16_bpd - fp32_bpd).double())
    unchanged, faster = abs(change.mean) <= BF16_UNCHANGED, bf16_seconds < fp32_seconds
    reasons = ([] if unchanged else [f"it moves the mean bpd by {change.mean:+.4f} (more than {BF16_UNCHANGED})"]) + \
              ([] if faster else [f"it is slower here ({bf16_seconds:.0f} s against {fp32_seconds:.0f} s)"])
    return {"mean_difference": change.mean, "difference_standard_error": change.standard_error,
            "max_abs_difference_per_image": (bf16_bpd - fp32_bpd).abs().max().item(),
            "unchanged": unchanged, "faster": faster, "use_bf16": unchanged and faster,
            "verdict": "bf16 used" if unchanged and faster else "float32 kept: " + "; ".join(reasons)}


def bf16_check(model, sde, images, args, device, argv):
    """The fast path with a float32 and a bf16-autocast network on the same images (see the docstring)."""
    generator = torch.Generator().manual_seed(args.seed)
    x = dequantize(images[:args.bf16_check], generator)
    probe = make_probe(x, "gaussian", generator)
    runs = {}
    for name, network in (("float32", model), ("bf16", bf16_network(model, device))):
        bpd, seconds, nfe = bpd_of(network, sde, x, probe, "torchdiffeq", args.batch, device, torch.float32,
                                   f"network in {name}")
        runs[name] = {"bpd": bpd, "nfe": nfe, "seconds": seconds}
    check = {**provenance(device, "python benchmarks/likelihood_speed.py", argv), "n": len(x), "batch": args.batch,
             **{name: {"bpd_mean": run["bpd"].mean().item(), "nfe_per_batch": run["nfe"],
                       "seconds": run["seconds"]} for name, run in runs.items()},
             **bf16_verdict(runs["float32"]["bpd"], runs["bf16"]["bpd"],
                            runs["float32"]["seconds"], runs["bf16"]["seconds"])}
    print(f"float32 {check['float32']['bpd_mean']:.4f} bpd, NFE {check['float32']['nfe_per_batch']}, "
          f"{check['float32']['seconds']:.0f} s; bf16 {check['bf16']['bpd_mean']:.4f} bpd, NFE "
          f"{check['bf16']['nfe_per_batch']}, {check['bf16']['seconds']:.0f} s: {check['verdict']}")
    merge_into(args.out, "bf16_check", check)


if __name__ == "__main__":
    main()

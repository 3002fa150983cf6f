"""Where a likelihood model's flow starts: its bits/dim from several cut-offs above its training eps.

    python benchmarks/cutoff_study.py [--model mnist-ve-fine] [--sigmas 0.0005 0.001 0.002 0.0032]
                                      [--images 1000] [--tolerance 2e-3] [--threads 1] [--out PATH]

For each noise level sigma~ in --sigmas (at or above the model's training sigma~(eps)), the bits/dim
of the first --images MNIST test images from the eps where the model's SDE reaches sigma~, with the
dequantisation and Gaussian Hutchinson probes of `benchmarks/model_scores.py` (seed 0: the same
images, noise and probes as every model's entry in models.json, so differences are paired),
torchdiffeq dopri5 at rtol = atol = --tolerance. Per cut-off: every image's bits/dim, the mean ±
standard error, the median, and the share of images above 5 bits/dim. A cut-off whose figures
models.json already holds (the model's own eps, same seed, images and tolerance) is copied from
there. Writes sdelib/results/cutoff_study.json (for another --model than mnist-ve-fine,
cutoff_study_<model>.json) after each cut-off (machine, command, date); run again with the same
arguments, it skips the cut-offs already there.
"""
import argparse
import json
from pathlib import Path

import torch

from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.likelihood import dataset_bpd, dequantize, make_probe
from sdelib.metrics import mean_and_standard_error
from sdelib.pretrained import load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result

RESULTS = RESULTS_DIR / "cutoff_study.json"
MODELS_RESULTS = RESULTS_DIR / "models.json"           # benchmarks/model_scores.py's
HIGH = 5.0  # bits/dim: an image above this is counted as one the flow fails on


def summary(bpd: torch.Tensor) -> dict:
    estimate = mean_and_standard_error(bpd.double())
    return {"bpd_mean": estimate.mean, "bpd_standard_error": estimate.standard_error,
            "bpd_median": bpd.double().median().item(), "n": estimate.n,
            "share_above": (bpd > HIGH).double().mean().item(),
            "bpd": [round(v, 6) for v in bpd.tolist()]}


def describe(entry: dict) -> str:
    """One line of a summary: mean ± standard error, median, share above HIGH."""
    return (f"{entry['bpd_mean']:.3f} ± {entry['bpd_standard_error']:.3f} bits/dim, median "
            f"{entry['bpd_median']:.3f}, {entry['share_above']:.1%} above {HIGH:g}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mnist-ve-fine")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.0005, 0.001, 0.002, 0.0032])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON written (default: cutoff_study.json for mnist-ve-fine, "
                             "cutoff_study_<model>.json for another model)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS if args.model == "mnist-ve-fine" else \
            RESULTS.with_name(f"cutoff_study_{args.model}.json")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    model, sde = load_pretrained(args.model, map_location=device)
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)          # model_scores.py's draws
    x = dequantize(load_mnist("test")[0][:args.images], generator)
    probe = make_probe(x, "gaussian", generator)
    report = {**provenance(device, "python benchmarks/cutoff_study.py", argv),
              "model": args.model, "seed": 0, "tolerance": args.tolerance, "high": HIGH,
              "images": f"the first {args.images} MNIST test images", "cutoffs": []}
    if args.out.exists():
        earlier = json.loads(args.out.read_text())
        if [earlier.get(k) for k in ("model", "tolerance", "images")] == \
                [report[k] for k in ("model", "tolerance", "images")]:
            report["cutoffs"] = earlier["cutoffs"]
    done = {round(c["sigma"], 8) for c in report["cutoffs"]}
    shipped = json.loads(MODELS_RESULTS.read_text()).get(args.model, {}).get("likelihood", {})
    for sigma in args.sigmas:
        if round(sigma, 8) in done:
            continue
        eps = float(sde.time_of_scaled_std(torch.tensor(sigma, dtype=torch.float64)))
        if (shipped.get("eps") is not None and abs(shipped["eps"] / eps - 1) < 1e-5
                and shipped["seed"] == 0 and shipped["n"] == args.images
                and shipped["tolerance"] == args.tolerance):
            bpd, source = torch.tensor(shipped["bpd"]), "models.json"
        else:
            result = dataset_bpd(model, sde, x, probe, batch_size=args.batch, device=device,
                                 solver="torchdiffeq", eps=eps, rtol=args.tolerance,
                                 atol=args.tolerance, desc=f"from sigma~ = {sigma:g}")
            bpd, source = result.bpd, "measured"
        entry = {"sigma": sigma, "eps": eps, "source": source, **summary(bpd)}
        report["cutoffs"] = sorted(report["cutoffs"] + [entry], key=lambda c: c["sigma"])
        write_result(report, args.out)
        print(f"from sigma~ = {sigma:g} (t = {eps:.3g}): {describe(entry)}", flush=True)


if __name__ == "__main__":
    main()

"""Samplers compared by sample quality per network evaluation, on the shipped MNIST model.

    python benchmarks/samplers.py [--n 1000] [--quick] [--resume] [--threads 2]

For each sampler setting: n samples from the shipped `mnist-ve` model (clipped to [0, 1]), their
Fréchet distance to the MNIST test set in the features of the shipped evaluation classifier
(`metrics.frechet_distance`, not Inception FID), its bootstrap standard error, the classifier's
class balance of the samples, NFE and wall time. Settings: Euler–Maruyama, predictor–corrector
(snr 0.075, 0.16, 0.2), the adaptive RK45 probability-flow ODE and the few-step Heun solver at
several NFE (~10 to 1000), the few-step SDE samplers with a final Tweedie denoising step, EDM's
stochastic sampler (`edm_stochastic`, Heun or Euler steps with fresh noise before each) and
SDE-DPM-Solver++(2M) (`dpm_solver_sde`, its eta chosen under --selection).
`--quick` runs a small subset (for a CPU session). The JSON is rewritten after every setting;
`--resume` keeps the rows of an earlier run with the same n, batch and seed (identical samples: the
generators are seeded per setting and batch) and runs only the missing settings, so an interrupted
sweep loses at most one setting; a `note` written into the JSON by hand (which runs made which rows)
is kept. The reference row (PC, 500 steps = 1,000 NFE, snr 0.16) runs first.
Writes sdelib/results/samplers.json and samplers.png; the chapter "Which sampler should I use?"
reads them.

`--selection` runs the held-out protocol that chose the sweep's ≤ 50-NFE candidates before the sweep
saw them: other samples (seed 1, the sweep's is 0), Fréchet distance to 10,000 MNIST *training*
images (a fixed random subset) instead of the test set, and the SELECTION grid (the PC-1000
reference and the few-step candidates); it writes results/sampler_selection.{json,png}.
"""
import argparse
import datetime
import json
import time
from functools import partial, update_wrapper
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from sdelib.data import load_mnist
from sdelib.device import default_device
from sdelib.metrics import bootstrap_standard_error, class_balance, classifier_features, frechet_distance
from sdelib.pretrained import load_pretrained
from sdelib.provenance import RESULTS_DIR, provenance, write_result
from sdelib.samplers import (dpm_solver_sde, edm_stochastic, euler_maruyama, heun_ode, predictor_corrector,
                             probability_flow_ode)
from sdelib.viz import plot_sampler_sweep

RESULTS = RESULTS_DIR
# the adaptive ODE rows: dopri5 (RK45's Dormand–Prince pair) batched on the device
ode_dopri5 = update_wrapper(partial(probability_flow_ode, solver="torchdiffeq"), probability_flow_ode)

STOCHASTIC = [("EDM stochastic, Heun", edm_stochastic, dict(steps=s, order=2, churn=30.0)) for s in (5, 10, 25)] + \
             [("EDM stochastic, Euler", edm_stochastic, dict(steps=s, order=1, churn=30.0)) for s in (10, 25, 50)]
# SDE-DPM-Solver++(2M) with eta = 6 and a final Tweedie step: chosen under --selection (held out, see
# SELECTION below) before these rows ran; eta = 1 (the reverse SDE eq. 6 itself) for comparison
DPM_SOLVER = [("DPM-Solver++ SDE + Tweedie", dpm_solver_sde, dict(steps=s, order=2, eta=6.0, denoise=True))
              for s in (9, 24, 49)] + \
             [("DPM-Solver++ SDE + Tweedie", dpm_solver_sde, dict(steps=49, order=2, eta=1.0, denoise=True))]
FULL = [("Euler–Maruyama", euler_maruyama, dict(steps=s)) for s in (10, 25, 50, 100, 250, 500)] + \
       [("predictor–corrector", predictor_corrector, dict(steps=s, snr=r))
        for r in (0.075, 0.16, 0.2) for s in (25, 100, 500)] + \
       [("RK45 ODE", ode_dopri5, dict(rtol=tol, atol=tol)) for tol in (1e-3, 1e-5)] + \
       [("Heun ODE", heun_ode, dict(steps=s)) for s in (5, 10, 18, 25, 50)] + \
       [("Euler–Maruyama + Tweedie", euler_maruyama, dict(steps=s, denoise=True)) for s in (25, 100)] + \
       [("predictor–corrector + Tweedie", predictor_corrector, dict(steps=25, snr=0.16, denoise=True))] + \
       STOCHASTIC + DPM_SOLVER
REFERENCE = ("predictor–corrector", dict(steps=500, snr=0.16))
# ≤ 50-NFE candidates, compared under --selection (seed 1, training-set reference) only; the second
# round (eta > 1, Tweedie for EDM) was added after the first showed Tweedie helping DPM-Solver++,
# the third (eta 3, 4) and fourth (6, 10) after the distance kept falling with eta
SELECTION = [(REFERENCE[0], predictor_corrector, REFERENCE[1])] + \
            [("EDM stochastic, Euler", edm_stochastic, dict(steps=50, order=1, churn=c)) for c in (10.0, 15.0, 30.0)] + \
            [("DPM-Solver++ SDE", dpm_solver_sde, dict(steps=50, order=o, eta=1.0)) for o in (1, 2)] + \
            [("DPM-Solver++ SDE", dpm_solver_sde, dict(steps=50, order=2, eta=0.5)),
             ("DPM-Solver++ SDE + Tweedie", dpm_solver_sde, dict(steps=49, order=2, eta=1.0, denoise=True))] + \
            [("DPM-Solver++ SDE + Tweedie", dpm_solver_sde, dict(steps=49, order=2, eta=e, denoise=True)) for e in (1.5, 2.0, 3.0, 4.0, 6.0, 10.0)] + \
            [("EDM stochastic, Euler + Tweedie", edm_stochastic, dict(steps=49, order=1, churn=30.0, denoise=True))]
QUICK = [("Heun ODE", heun_ode, dict(steps=s)) for s in (5, 10, 25)] + \
        [("RK45 ODE", ode_dopri5, dict(rtol=1e-3, atol=1e-3))] + \
        [("Euler–Maruyama", euler_maruyama, dict(steps=s)) for s in (25, 100, 250)] + \
        [("predictor–corrector", predictor_corrector, dict(steps=s, snr=0.16)) for s in (25, 500)] + \
        [STOCHASTIC[2], STOCHASTIC[5], DPM_SOLVER[2]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="samples per setting")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a small sweep for a CPU session")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None, help="default 0 (1 with --selection)")
    parser.add_argument("--selection", action="store_true",
                        help="the held-out protocol: SELECTION grid, seed 1, 10,000 training images as reference")
    parser.add_argument("--resume", action="store_true", help="keep the finished rows of an earlier run")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write (the plot goes beside it as .png; the chapter reads the default "
                             "results/samplers.json, or results/sampler_selection.json with --selection)")
    parser.add_argument("--replot", action="store_true", help="only redraw the .png from the JSON")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("sampler_selection.json" if args.selection else "samplers.json")
    if args.replot:
        return draw(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
    if args.seed is None:
        args.seed = 1 if args.selection else 0
    args.reference = "10,000 MNIST training images (seeded subset)" if args.selection else "the 10,000 MNIST test images"
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    model, sde = load_pretrained("mnist-ve", map_location=device)
    classifier, _ = load_pretrained("mnist-classifier", map_location=device)
    reference = classifier_features(classifier, reference_images(args.selection))
    bootstrap = torch.Generator().manual_seed(args.seed)
    grid = SELECTION if args.selection else QUICK if args.quick else FULL
    earlier = _earlier_rows(args) if args.resume else []
    rows, todo = plan(grid, earlier)
    # a note written into the JSON by hand belongs to the rows it describes: kept only with them
    args.note = json.loads(args.out.read_text()).get("note") if earlier else None
    if rows:
        print(f"resuming: {len(rows)} settings kept, {len(todo)} to run", flush=True)
    for name, sampler, settings in todo:
        parts, nfe, start = [], 0, time.perf_counter()
        for i, first in enumerate(range(0, args.n, args.batch)):
            size = min(args.batch, args.n - first)
            generator = torch.Generator(device=device).manual_seed(args.seed * 1000 + i)
            with torch.no_grad():
                result = sampler(model, sde, (size, 1, 28, 28), generator=generator, **settings)
            parts.append(result.samples.float().clamp(0, 1).cpu())
            nfe = result.nfe
        seconds = time.perf_counter() - start
        samples = torch.cat(parts)
        features = classifier_features(classifier, samples)
        distance = frechet_distance(features, reference)
        se = bootstrap_standard_error(frechet_distance, features, reference, n_boot=20, generator=bootstrap)
        balance = class_balance(classifier, samples)
        row = {"sampler": name, "settings": settings, "nfe": nfe, "n": args.n, "frechet": distance,
               "frechet_standard_error": se, "seconds": seconds, "class_balance": balance.tolist(),
               "date": datetime.date.today().isoformat()}
        rows = _in_grid_order(rows + [row], grid)
        print(f"{name:20s} {json.dumps(settings):36s} NFE {nfe:5d}  FD {distance:8.3f} ± {se:.3f}  "
              f"{seconds:7.1f} s  classes {balance.min():.3f}-{balance.max():.3f}", flush=True)
        save(rows, args, device, argv)
    save(rows, args, device, argv, plot=True)


def reference_images(selection: bool) -> torch.Tensor:
    """The MNIST test set, or (for --selection) 10,000 training images chosen with a fixed seed."""
    if not selection:
        return load_mnist("test")[0]
    train_images, _ = load_mnist("train")
    return train_images[torch.randperm(len(train_images), generator=torch.Generator().manual_seed(0))[:10_000]]


def plan(grid, earlier_rows):
    """(rows of `earlier_rows` that belong to `grid`, the grid's settings still to run, the
    reference setting first)."""
    rows = _in_grid_order(earlier_rows, grid)
    done = {_key(r["sampler"], r["settings"]) for r in rows}
    todo = sorted((g for g in grid if _key(g[0], g[2]) not in done), key=lambda g: _key(g[0], g[2]) != _key(*REFERENCE))
    return rows, todo


def _in_grid_order(rows, grid):
    """The rows that belong to `grid`, in the grid's order."""
    order = [_key(g[0], g[2]) for g in grid]
    kept = [r for r in rows if _key(r["sampler"], r["settings"]) in order]
    return sorted(kept, key=lambda r: order.index(_key(r["sampler"], r["settings"])))


def _key(name, settings):
    return name, json.dumps(settings, sort_keys=True)


def _earlier_rows(args):
    """Rows of the --out JSON made with the same n, batch, seed and reference (else none)."""
    path = args.out
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if [earlier.get(k) for k in ("n", "batch", "seed", "reference")] != [args.n, args.batch, args.seed, args.reference]:
        print(f"--resume: {path} was made with other n / batch / seed / reference; starting afresh")
        return []
    return earlier["rows"]


def save(rows, args, device, argv, plot=False):
    report = {**provenance(device, "python benchmarks/samplers.py", argv), "model": "mnist-ve",
              "n": args.n, "batch": args.batch, "seed": args.seed,
              "features": "penultimate layer (128) of the shipped mnist-classifier", "rows": rows,
              "reference": args.reference, "selection": args.selection,
              **({"note": args.note} if args.note else {})}
    write_result(report, args.out)
    if plot:
        draw(report, args.out.with_suffix(".png"))


def draw(report, path):
    """The sweep as distance against NFE per sampler (log-log), or for a --selection run, one bar
    per setting against the reference's distance + 2 SE; ± 2 SE error bars."""
    rows = report["rows"]
    reference = [r for r in rows if (r["sampler"], r["settings"]) == REFERENCE]
    if report.get("selection"):
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
        labels = [f"{r['sampler']}: " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()) + f" ({r['nfe']} NFE)"
                  for r in rows]
        ax.barh(range(len(rows)), [r["frechet"] for r in rows], xerr=[2 * r["frechet_standard_error"] for r in rows],
                color=["tab:gray" if r["nfe"] > 50 else "tab:blue" for r in rows], capsize=3)
        for r in reference:
            ax.axvline(r["frechet"] + 2 * r["frechet_standard_error"], color="k", ls=":", label="PC-1000 + 2 SE")
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"Fréchet distance to {report['reference']} (± 2 SE)")
        ax.legend(fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        plot_sampler_sweep(rows, ax, ylabel="Fréchet distance to MNIST test (± 2 SE)")
        for r in reference:
            ax.axhline(r["frechet"] + 2 * r["frechet_standard_error"], color="k", ls=":", lw=1,
                       label="PC-1000 (snr 0.16) + 2 SE")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"sample quality, {rows[0]['n']} samples each (seed {report['seed']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Rectified flow against the score models at few steps: Fréchet distance per NFE, straightness of
the probability-flow paths, and the rectified-flow model's bits/dim.

    python benchmarks/flow_matching.py [--model mnist-rf] [--score-models mnist-ve]
        [--samples 1000] [--nfe 1 2 4 8 16 32 50] [--straightness-models ...]
        [--straightness-samples 64] [--straightness-steps 100] [--bpd-images 1000]
        [--tolerance 2e-3] [--seed 0] [--threads N] [--quick] [--out PATH]

Samplers, at each budget of N network evaluations (NFE) per sample:
- the rectified-flow model (`--model`), on the uniform grid t_i = T - i (T - eps) / n, i = 0..n,
  from x(T) = T z to eps = 1e-3 (its training eps), with the velocity u = A x - g^2 s / 2
  (`targets.from_score(..., "velocity")`, the net's own output):
  * Euler: n = N steps x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i), one evaluation each;
  * Heun: steps of Heun's method (the slopes at both ends of the step, averaged: two evaluations
    each), the last step or two Euler's, as EDM's last step (a Heun step would evaluate the
    velocity at the end of the last step, at t = eps, where the learned velocity of an Euler
    guess far from the data is unreliable): (N - e) / 2 Heun steps and e Euler steps, e = 1 for
    odd N and 2 for even N, exactly N evaluations; at N <= 2 Heun is Euler.
- each score model (`--score-models`) and the rectified-flow model read as a score model
  (s = the score of its velocity), stopping at the noise level sigma~ = 0.032 of every model
  in models.json (`model_scores.sampling_eps`), with SDE-DPM-Solver++(2M) (`dpm_solver_sde`,
  order 2, EDM grid): eta = 6 (the book's best sampler at <= 50 NFE, models.json) and eta = 0 (the
  probability-flow ODE, DPM-Solver++(2M)); N - 1 steps (one evaluation each) and a final Tweedie
  step (one evaluation): exactly N; at N = 1 one step without the Tweedie step.
Every sampler starts from the same standard normal draws z, scaled by each SDE's prior std, and
its NFE is counted (calls of the net per batch) and checked against N.
Fréchet distance: --samples samples (clipped to [0, 1]) against the 10,000 MNIST test images in
the shipped classifier's features (`metrics.frechet_distance`, not Inception FID), bootstrap
standard error over 20 resamples, as benchmarks/model_scores.py.
Differences, at each budget, between every sampler of the rectified-flow model and every sampler
of each score model: the difference of their Fréchet distances and its paired bootstrap standard
error (the same resampled rows of both, which share their starting draws z, and the same resampled
reference), over 100 resamples.

Straightness, per model of --straightness-models: --straightness-samples probability-flow paths
from x(T) ~ prior to the noise level sigma~ = 0.032, solved by `heun_ode` with
--straightness-steps steps (states kept at every step of the EDM grid). With tau = (T - t) /
(T - eps) in [0, 1] and y(tau) the path,
  * S = E int_0^1 |y'(tau)|^2 dtau / E |y(1) - y(0)|^2 - 1 >= 0: Liu, Gong & Liu's (2023)
    straightness int_0^1 E|(y(1) - y(0)) - y'|^2 dtau divided by E|y(1) - y(0)|^2; 0 only for
    straight paths run at constant speed in the model's own time t (then one Euler step in t is
    exact). Bootstrap standard error over samples.
  * chord / arc = |y(1) - y(0)| / int |dy|, per sample (mean ± standard error): 1 only for a
    straight path, whatever its speed (a property of the curve, not of its time).
  Both from the polyline through the kept states, which puts S slightly below and chord / arc
  slightly above their values for the continuous path.

Bits/dim of the rectified-flow model from the score models' noise floor: `model_scores.bpd_entry`
(the first --bpd-images MNIST test images, uniformly dequantised, one Gaussian Hutchinson probe
each, torchdiffeq dopri5 at rtol = atol = --tolerance) from the time eps at which its noise level
sigma~(eps) is the score models' at their likelihood eps in models.json (0.0032: VE at 1e-5, VP at
1e-4), so that the floor a finite eps puts under the bound is the same for all (models.json has
the figure from the model's own training eps, 1e-3, where sigma~ = 0.001).

Writes sdelib/results/flow_matching.json (with the machine, command and date); the chapter
"Flow matching" reads it. `--quick` is a smoke run (200 samples, NFE 1 and 2, 4 paths, 2 images).
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_scores  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from sdelib import targets  # noqa: E402
from sdelib.data import load_mnist  # noqa: E402
from sdelib.device import default_device  # noqa: E402
from sdelib.metrics import (bootstrap_standard_error, classifier_features,  # noqa: E402
                            frechet_distance, mean_and_standard_error)
from sdelib.pretrained import CHECKPOINT_DIR, load_pretrained  # noqa: E402
from sdelib.provenance import RESULTS_DIR, provenance, write_result  # noqa: E402
from sdelib.samplers import dpm_solver_sde, heun_ode, heun_time_grid  # noqa: E402
from sdelib.sde import VESDE  # noqa: E402

OUT = RESULTS_DIR / "flow_matching.json"
NFE = (1, 2, 4, 8, 16, 32, 50)
RF_EPS = 1e-3                 # where the rectified-flow samplers stop (its training eps)
STRAIGHTNESS_MODELS = ("mnist-rf", "mnist-ve", "mnist-ve-is", "mnist-vp", "mnist-subvp")
N_BOOT = 20
N_BOOT_DIFFERENCE = 100
COMMON_FLOOR = VESDE(25.0).scaled_std(torch.tensor(1e-5, dtype=torch.float64))  # sigma~ = 0.0032
NFE_ACCOUNTING = (
    "NFE counts network evaluations per sample. Euler: one per step. Heun: two per Heun step (the "
    "slopes at both ends) and one per Euler step; a budget of N ends with e Euler steps (e = 1 "
    "for odd N, 2 for even N) after (N - e) / 2 Heun steps, so at N <= 2 Heun is Euler. "
    "SDE-DPM-Solver++(2M) (eta = 6 or 0): one per "
    "step, N - 1 steps and a final Tweedie denoising step (one evaluation); at N = 1 one step "
    "without it.")


class Counting:
    """The net, counting its calls (each call evaluates every sample of the batch once)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.model(x, t)


def velocity_of(score_fn, sde):
    """u(x, t) = A x - g^2 s / 2, the probability-flow velocity of a score (for a velocity net,
    its output)."""
    return lambda x, t: targets.from_score(sde, x, t, score_fn(x, t), "velocity")


def uniform_times(sde, steps, eps=RF_EPS):
    """t_0 = T > t_1 > ... > t_steps = eps, equally spaced (float64)."""
    return torch.linspace(sde.T, eps, steps + 1, dtype=torch.float64)


@torch.no_grad()
def euler(velocity, x, times):
    """x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i): one evaluation per step."""
    for i in range(len(times) - 1):
        x = x + (times[i + 1] - times[i]).item() * velocity(x, times[i].to(x).expand(len(x)))
    return x


@torch.no_grad()
def heun(velocity, x, times, euler_steps=0):
    """Heun's method on the grid: the Euler guess, then the step with the mean of the slopes at
    both ends (two evaluations per step); the last `euler_steps` steps are Euler's (as EDM's
    last step: the slope at the end of the last step, near the data, is not trusted)."""
    heun_steps = len(times) - 1 - euler_steps
    for i in range(len(times) - 1):
        h = (times[i + 1] - times[i]).item()
        slope = velocity(x, times[i].to(x).expand(len(x)))
        guess = x + h * slope
        if i >= heun_steps:
            x = guess
        else:
            x = x + h / 2 * (slope + velocity(guess, times[i + 1].to(x).expand(len(x))))
    return x


def heun_plan(budget):
    """(Heun steps, Euler steps) that spend `budget` evaluations exactly, ending with one Euler
    step (odd budget) or two (even budget): (budget - e) / 2 Heun steps, then e Euler steps."""
    euler_steps = 1 if budget % 2 else 2
    return (budget - euler_steps) // 2, min(euler_steps, budget)


def rf_sample(sampler, model, sde, z, budget):
    """(samples, steps) of the rectified-flow model from x(T) = T z at `budget` evaluations."""
    x_init = sde.prior_std * z
    velocity = velocity_of(model, sde)
    if sampler == "Euler":
        return euler(velocity, x_init, uniform_times(sde, budget)), budget
    heun_steps, euler_steps = heun_plan(budget)
    steps = heun_steps + euler_steps
    return heun(velocity, x_init, uniform_times(sde, steps), euler_steps), steps


def dpm_sample(eta, model, sde, z, budget, generator):
    """(samples, steps) of SDE-DPM-Solver++(2M) with `eta` at `budget` evaluations, stopping at
    sigma~ = 0.032 (model_scores.sampling_eps), with a final Tweedie step when budget >= 2."""
    steps, denoise = (budget - 1, True) if budget >= 2 else (1, False)
    result = dpm_solver_sde(model, sde, z.shape, steps=steps, order=2, eta=eta, denoise=denoise,
                            eps=model_scores.sampling_eps(sde), x_init=sde.prior_std * z,
                            generator=generator, device=z.device)
    return result.samples, steps


SAMPLERS = {   # name -> (kind of model, settings written to the JSON)
    "Euler": ("rf", {"grid": "uniform in t", "eps": RF_EPS}),
    "Heun": ("rf", {"grid": "uniform in t", "eps": RF_EPS}),
    "DPM-Solver++ SDE + Tweedie": ("score", {"order": 2, "eta": 6.0, "grid": "EDM, rho = 7"}),
    "DPM-Solver++(2M) ODE + Tweedie": ("score", {"order": 2, "eta": 0.0, "grid": "EDM, rho = 7"}),
}


def start_noise(shape, seed, batch_index, device):
    """The standard normal draws every sampler starts from (batch by batch, seeded)."""
    generator = torch.Generator(device=device).manual_seed(seed * 1000 + batch_index)
    return torch.randn(shape, generator=generator, device=device)


def fd_row(sampler, name, model, sde, budget, n, batch, seed, device, classifier, reference):
    """One row: `sampler` on model `name` at `budget` NFE, n samples, Fréchet distance ± SE;
    and the samples' features."""
    parts, start, counted, steps = [], time.perf_counter(), None, None
    for b, first in enumerate(range(0, n, batch)):
        z = start_noise((min(batch, n - first), 1, 28, 28), seed, b, device)
        net = Counting(model)
        if SAMPLERS[sampler][0] == "rf":
            samples, steps = rf_sample(sampler, net, sde, z, budget)
        else:
            generator = torch.Generator(device=device).manual_seed(seed * 1000 + 500 + b)
            eta = SAMPLERS[sampler][1]["eta"]
            samples, steps = dpm_sample(eta, net, sde, z, budget, generator)
        if counted is None:
            counted = net.calls
        elif net.calls != counted:
            raise RuntimeError(f"{sampler} spent {net.calls} evaluations on batch {b}, "
                               f"{counted} on the first")
        parts.append(samples.float().clamp(0, 1).cpu())
    if counted != budget:
        raise RuntimeError(f"{sampler} at a budget of {budget} NFE spent {counted}")
    features = classifier_features(classifier, torch.cat(parts))
    row = {"sampler": sampler, "model": name, "budget": budget, "nfe": counted, "steps": steps,
           "settings": dict(SAMPLERS[sampler][1]), "n": n,
           "frechet": frechet_distance(features, reference),
           "frechet_standard_error": bootstrap_standard_error(
               frechet_distance, features, reference, n_boot=N_BOOT,
               generator=torch.Generator().manual_seed(seed)),
           "seconds": time.perf_counter() - start}
    return row, features


def paired_difference(features_a, features_b, reference, seed):
    """FD(a) - FD(b) and its paired bootstrap standard error: row i of a and of b start from the
    same draw z_i, so both are resampled with the same indices (and against the same resampled
    reference); independent bootstraps would ignore the correlation the shared draws bring."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(N_BOOT_DIFFERENCE):
        rows = torch.randint(len(features_a), (len(features_a),), generator=generator)
        reference_rows = torch.randint(len(reference), (len(reference),), generator=generator)
        resampled = reference[reference_rows]
        values.append(frechet_distance(features_a[rows], resampled)
                      - frechet_distance(features_b[rows], resampled))
    return (frechet_distance(features_a, reference) - frechet_distance(features_b, reference),
            float(torch.tensor(values, dtype=torch.float64).std()))


@torch.no_grad()
def straightness(model, sde, z, steps):
    """Liu et al.'s normalised straightness S and the chord / arc ratio of the probability-flow
    paths from x(T) = prior_std z down to sigma~ = 0.032 (module docstring)."""
    eps = model_scores.sampling_eps(sde)
    states = [sde.prior_std * z]
    heun_ode(model, sde, z.shape, steps=steps, eps=eps, x_init=states[0], device=z.device,
             callback=lambda i, t, x: states.append(x.detach().clone()))
    path = torch.stack([s.flatten(1).double().cpu() for s in states])    # (steps + 1, n, D)
    times = heun_time_grid(sde, steps, eps)
    tau = (sde.T - times) / (sde.T - eps)
    moves = path[1:] - path[:-1]
    arc = moves.norm(dim=-1).sum(0)
    chord = (path[-1] - path[0]).norm(dim=-1)
    energy = (moves.pow(2).sum(-1) / (tau[1:] - tau[:-1])[:, None]).sum(0)   # int |y'|^2 dtau

    def liu(pairs):                       # pairs: (n, 2) = (int |y'|^2 dtau, |y(1) - y(0)|)
        return float(pairs[:, 0].mean() / pairs[:, 1].pow(2).mean() - 1)

    pairs = torch.stack([energy, chord], dim=1)   # resampled together: one path, one row
    ratio = mean_and_standard_error(chord / arc)
    return {"S": liu(pairs),
            "S_standard_error": bootstrap_standard_error(
                liu, pairs, n_boot=N_BOOT, generator=torch.Generator().manual_seed(0)),
            "chord_over_arc": ratio.mean, "chord_over_arc_standard_error": ratio.standard_error,
            "n": len(z), "steps": steps, "nfe": 2 * steps, "sigma_end": float(sde.scaled_std(
                torch.tensor(eps, dtype=torch.float64))), "eps": eps}


def model_log(name):
    """The shipped model's training log (sha256, sde, net, settings)."""
    return json.loads((CHECKPOINT_DIR / f"{name}.json").read_text())


def load(name, device):
    model, sde = load_pretrained(name, map_location=device)
    return model.requires_grad_(False), sde


def run(args, argv=None):
    """Measure everything `args` asks for; returns the report (written to args.out)."""
    device = default_device()
    log = model_log(args.model)
    report = {**provenance(device, "python benchmarks/flow_matching.py", argv),
              "model": args.model, "sha256": log["sha256"], "sde": log["sde"], "net": log["net"],
              "score_models": {name: {"sha256": model_log(name)["sha256"],
                                      "sde": model_log(name)["sde"]}
                               for name in args.score_models},
              "nfe_accounting": NFE_ACCOUNTING,
              "fd": {"n": args.samples, "batch": args.batch, "seed": args.seed,
                     "features": "penultimate layer (128) of the shipped mnist-classifier",
                     "reference": "the 10,000 MNIST test images", "budgets": list(args.nfe)},
              "rows": [], "differences": []}
    test_images = load_mnist("test")[0]
    classifier, _ = load("mnist-classifier", device)
    reference = classifier_features(classifier, test_images)
    models = {args.model: load(args.model, device)}
    models.update({name: load(name, device) for name in args.score_models})
    for budget in args.nfe:
        features = {}
        for sampler, (kind, _) in SAMPLERS.items():
            for name in ([args.model] if kind == "rf" else [args.model, *args.score_models]):
                row, features[name, sampler] = fd_row(
                    sampler, name, *models[name], budget, args.samples, args.batch, args.seed,
                    device, classifier, reference)
                report["rows"].append(row)
                print(f"{name:12s} {sampler:32s} {budget:3d} NFE: Fréchet distance "
                      f"{row['frechet']:8.2f} ± {row['frechet_standard_error']:.2f} "
                      f"({row['seconds']:.0f} s)", flush=True)
                write_result(report, args.out)
        for (name_a, sampler_a), features_a in features.items():
            for (name_b, sampler_b), features_b in features.items():
                if name_a == args.model and name_b != args.model:
                    difference, error = paired_difference(features_a, features_b, reference,
                                                          args.seed)
                    report["differences"].append(
                        {"budget": budget, "a": [name_a, sampler_a], "b": [name_b, sampler_b],
                         "difference": difference, "standard_error": error,
                         "n_boot": N_BOOT_DIFFERENCE})
        write_result(report, args.out)
    report["straightness"] = {}
    z = start_noise((args.straightness_samples, 1, 28, 28), args.seed + 1, 0, device)
    for name in args.straightness_models:
        model, sde = models[name] if name in models else load(name, device)
        report["straightness"][name] = straightness(model, sde, z, args.straightness_steps)
        entry = report["straightness"][name]
        print(f"{name:12s} straightness S = {entry['S']:.3f}, chord / arc = "
              f"{entry['chord_over_arc']:.3f}", flush=True)
        write_result(report, args.out)
    if args.bpd_images:
        model, sde = models[args.model]
        eps = float(f"{float(sde.time_of_scaled_std(COMMON_FLOOR)):.6g}")
        report["likelihood"] = model_scores.bpd_entry(
            model, sde, test_images[:args.bpd_images], args.seed, args.tolerance, args.bpd_batch,
            device, eps)
        report["likelihood"]["scaled_std_at_eps"] = float(COMMON_FLOOR)
        print(f"{args.model}: {report['likelihood']['bpd_mean']:.3f} ± "
              f"{report['likelihood']['bpd_standard_error']:.3f} bits/dim from eps = {eps} "
              f"(sigma~ = {float(COMMON_FLOOR):.4f})", flush=True)
    write_result(report, args.out)
    return report


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mnist-rf", help="the rectified-flow model")
    parser.add_argument("--score-models", nargs="+", default=["mnist-ve"])
    parser.add_argument("--samples", type=int, default=1000, help="samples per Fréchet distance")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFE))
    parser.add_argument("--straightness-models", nargs="+", default=list(STRAIGHTNESS_MODELS))
    parser.add_argument("--straightness-samples", type=int, default=64)
    parser.add_argument("--straightness-steps", type=int, default=100)
    parser.add_argument("--bpd-images", type=int, default=1000, help="0: no bits/dim")
    parser.add_argument("--bpd-batch", type=int, default=250)
    parser.add_argument("--tolerance", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 samples, NFE 1 and 2, 4 paths of 10 steps, 2 images")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.batch, args.nfe = 200, 200, [1, 2]
        args.straightness_samples, args.straightness_steps = 4, 10
        args.bpd_images, args.bpd_batch = min(args.bpd_images, 2), 2
    for name in ("samples", "batch", "straightness_samples", "straightness_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.samples <= 128:
        parser.error("--samples must exceed the classifier's 128 feature dimensions (the "
                     "Fréchet distance needs a non-singular covariance)")
    if any(n < 1 for n in args.nfe):
        parser.error(f"every --nfe must be at least 1, got {args.nfe}")
    return args


def main(argv=None):
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args, argv)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

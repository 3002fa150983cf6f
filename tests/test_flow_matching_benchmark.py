"""benchmarks/flow_matching.py's bookkeeping, on a smoke run with untrained nets.

The rectified-flow model and the score model are replaced by small untrained ScoreNets (the velocity
net for the rectified-flow path), MNIST by random images; the run writes its JSON into tmp_path.
Checked: the structure the chapter reads, every sampler's NFE (counted calls) equal to its budget
as the module docstring accounts for it, and the samplers' arithmetic on a velocity field with a
known flow."""
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from sdelib.nets import ScoreNet
from sdelib.sde import RectifiedFlowSDE, VESDE
from sdelib.targets import to_score

SPEC = importlib.util.spec_from_file_location(
    "flow_matching_benchmark", Path(__file__).parents[1] / "benchmarks" / "flow_matching.py")
fm = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(fm)


def tiny(sde, **kwargs):
    torch.manual_seed(0)
    return ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=32, **kwargs).eval()


@pytest.fixture
def patched(monkeypatch):
    """Untrained nets for 'rf' and 've', random 'MNIST' test images, and the shipped classifier."""
    real_load = fm.load
    nets = {"rf": (tiny(RectifiedFlowSDE(), output="velocity"), RectifiedFlowSDE()),
            "ve": (tiny(VESDE(25.0)), VESDE(25.0))}
    for net, _ in nets.values():
        net.requires_grad_(False)

    def load(name, device):
        return nets[name] if name in nets else real_load(name, device)

    def model_log(name):
        net, sde = nets[name]
        return {"sha256": "0" * 64, "sde": sde.config(), "net": net.config(),
                "settings": {"eps": 1e-3}}

    images = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(fm, "load", load)
    monkeypatch.setattr(fm, "model_log", model_log)
    monkeypatch.setattr(fm, "load_mnist", lambda split: (images, torch.zeros(300).long()))
    monkeypatch.setattr(fm, "N_BOOT", 3)                     # bootstrap resamples (real: 20)
    monkeypatch.setattr(fm, "N_BOOT_DIFFERENCE", 3)          # (real: 100)
    # bits/dim: model_scores.bpd_entry (tested in test_benchmarks.py) is recorded, not run
    calls = []

    def bpd_entry(model, sde, images, seed, tolerance, batch, device, eps):
        calls.append(dict(model=model, sde=sde, n=len(images), seed=seed, tolerance=tolerance,
                          batch=batch, eps=eps))
        return {"bpd_mean": 1.0, "bpd_standard_error": 0.1, "n": len(images), "eps": eps,
                "bpd": [1.0] * len(images)}

    monkeypatch.setattr(fm.model_scores, "bpd_entry", bpd_entry)
    return nets, calls


def test_smoke_run_writes_the_structure_the_chapter_reads(patched, tmp_path):
    out = tmp_path / "flow_matching.json"
    args = fm.parse(["--model", "rf", "--score-models", "ve", "--samples", "130",
                     "--batch", "65", "--nfe", "1", "3", "--straightness-models", "rf",
                     "ve", "--straightness-samples", "3", "--straightness-steps", "3",
                     "--bpd-images", "2", "--bpd-batch", "2", "--tolerance", "1e-2",
                     "--out", str(out)])
    fm.run(args, ["--smoke"])
    nets, bpd_calls = patched
    report = json.loads(out.read_text())
    for key in ("machine", "device", "torch", "command", "date", "model", "sha256", "sde", "net",
                "score_models", "nfe_accounting", "fd", "rows", "differences", "straightness",
                "likelihood"):
        assert key in report, key
    assert report["fd"]["budgets"] == [1, 3] and report["fd"]["n"] == 130
    rows = report["rows"]
    # per budget: Euler and Heun on rf; both DPM-Solver++ samplers on rf (as a score model) and ve
    assert len(rows) == 2 * 6
    for row in rows:
        assert row["nfe"] == row["budget"], row          # the counted calls
        assert row["n"] == 130 and math.isfinite(row["frechet"]) and row["frechet"] >= 0
        assert row["frechet_standard_error"] > 0
    assert {(r["model"], r["sampler"]) for r in rows} == {
        ("rf", "Euler"), ("rf", "Heun"),
        *((name, sampler) for name in ("rf", "ve") for sampler in fm.SAMPLERS
          if fm.SAMPLERS[sampler][0] == "score")}
    # every rf row against every ve row, per budget: 4 x 2 x 2 budgets
    differences = report["differences"]
    assert len(differences) == 16
    frechet = {(r["model"], r["sampler"], r["budget"]): r["frechet"] for r in rows}
    for entry in differences:
        assert entry["a"][0] == "rf" and entry["b"][0] == "ve" and entry["standard_error"] > 0
        assert abs(entry["difference"] - (frechet[(*entry["a"], entry["budget"])]
                                          - frechet[(*entry["b"], entry["budget"])])) < 1e-9
    steps = {(r["sampler"], r["budget"]): r["steps"] for r in rows}
    # Euler: N steps; Heun: (N - e) / 2 Heun steps + e Euler steps (e = 1 odd, 2 even N);
    # DPM-Solver++: N - 1 steps + Tweedie (1 step, no Tweedie, at N = 1)
    assert [steps["Euler", n] for n in (1, 3)] == [1, 3]
    assert [steps["Heun", n] for n in (1, 3)] == [1, 2]
    assert [fm.heun_plan(n) for n in (1, 2, 3, 4, 50)] == [(0, 1), (0, 2), (1, 1), (1, 2), (24, 2)]
    assert [steps["DPM-Solver++ SDE + Tweedie", n] for n in (1, 3)] == [1, 2]
    assert [steps["DPM-Solver++(2M) ODE + Tweedie", n] for n in (1, 3)] == [1, 2]
    for name in ("rf", "ve"):
        entry = report["straightness"][name]
        assert entry["S"] >= -1e-9 and 0 < entry["chord_over_arc"] <= 1 + 1e-9
        assert entry["nfe"] == 6 and entry["n"] == 3
        assert abs(entry["sigma_end"] - 0.032) < 1e-3
    # the rectified-flow model's bits/dim from the score models' floor: sigma~(eps) = t / (1 - t)
    # equal to VE's at 1e-5, sqrt((25^(2e-5) - 1) / (2 ln 25)) = 0.0031625
    floor = math.sqrt(math.expm1(2e-5 * math.log(25.0)) / (2 * math.log(25.0)))
    assert abs(floor - 0.003163) < 1e-6
    assert len(bpd_calls) == 1
    call = bpd_calls[0]
    assert call["model"] is nets["rf"][0] and call["sde"] is nets["rf"][1]
    assert (call["n"], call["seed"], call["tolerance"], call["batch"]) == (2, 0, 1e-2, 2)
    assert abs(call["eps"] - floor / (1 + floor)) < 1e-8 and abs(call["eps"] - 1e-3) > 1e-3
    assert abs(report["likelihood"]["scaled_std_at_eps"] - floor) < 1e-10
    assert report["likelihood"]["bpd_mean"] == 1.0


def test_paired_difference_resamples_both_rows_alike():
    """Rows that share their starting draws are resampled together, so b = a has difference 0
    with standard error 0, where resampling the two independently (the negative control) gives a
    positive one; a shifted b has the difference of the two Fréchet distances."""
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(200, 3, dtype=torch.float64, generator=generator)
    reference = torch.randn(300, 3, dtype=torch.float64, generator=generator)
    difference, error = fm.paired_difference(a, a.clone(), reference, seed=0)
    assert difference == 0 and error == 0
    independent = fm.bootstrap_standard_error(
        lambda x, y, r: fm.frechet_distance(x, r) - fm.frechet_distance(y, r), a, a.clone(),
        reference, n_boot=20)
    assert independent > 1e-3
    shifted = a + 0.5
    difference, error = fm.paired_difference(shifted, a, reference, seed=0)
    assert abs(difference - (fm.frechet_distance(shifted, reference)
                             - fm.frechet_distance(a, reference))) < 1e-12 and error > 0


class StraightFlow:
    """A 'score' whose rectified-flow velocity is u(x, t) = c, a constant: every path is straight
    at constant speed, so Euler and Heun are exact, S = 0 and chord / arc = 1."""

    def __init__(self, sde, c):
        self.sde, self.c = sde, c

    def __call__(self, x, t):
        return to_score(self.sde, x, t, self.c.expand_as(x).to(x), "velocity")


def test_samplers_are_exact_on_a_constant_velocity_and_spend_their_budget():
    sde = RectifiedFlowSDE()
    c = torch.full((1, 1, 28, 28), 0.3, dtype=torch.float64)
    z = torch.randn(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = sde.prior_std * z + (fm.RF_EPS - sde.T) * c
    for sampler in ("Euler", "Heun"):
        for budget in (1, 2, 5, 6):
            net = fm.Counting(StraightFlow(sde, c))
            samples, _ = fm.rf_sample(sampler, net, sde, z, budget)
            assert net.calls == budget, (sampler, budget)
            assert (samples - exact).abs().max() < 1e-9, (sampler, budget)


def test_heun_is_second_order_and_euler_first_on_a_curved_flow():
    """u(x, t) = -x on [eps, T]: the flow is x(eps) = x(T) e^(T - eps). Halving the step cuts
    Euler's error by about 2 and Heun's by about 4 (negative control: Euler's does not drop 4x)."""
    x_T = torch.ones(1, 3, dtype=torch.float64)
    exact = x_T * math.exp(0.999 - fm.RF_EPS)
    sde = RectifiedFlowSDE()

    def error(method, steps):
        return (method(lambda x, t: -x, x_T, fm.uniform_times(sde, steps)) - exact).abs().max()

    euler_ratio = error(fm.euler, 20) / error(fm.euler, 40)
    heun_ratio = error(fm.heun, 20) / error(fm.heun, 40)        # all steps Heun's
    assert 1.8 < euler_ratio < 2.2 and 3.6 < heun_ratio < 4.4, (euler_ratio, heun_ratio)


def test_straightness_of_straight_and_of_bent_paths():
    """The measures on a constant velocity (straight, constant speed: S = 0, chord / arc = 1)
    and, as a negative control, on a score model whose paths are not straight."""
    sde = RectifiedFlowSDE()
    z = torch.randn(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    c = torch.randn(1, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    straight = fm.straightness(StraightFlow(sde, c), sde, z, 20)
    assert abs(straight["S"]) < 1e-9 and abs(straight["chord_over_arc"] - 1) < 1e-12

    def bent(x, t):                                          # the velocity turns with t
        tt = t[:, None, None, None]
        return to_score(sde, x, t, torch.cos(6 * tt) * c + torch.sin(6 * tt) * x, "velocity")

    curved = fm.straightness(bent, sde, z, 20)
    assert curved["S"] > 0.05 and curved["chord_over_arc"] < 0.99


def test_quick_and_bad_options():
    args = fm.parse(["--quick"])
    assert args.samples == 200 and args.nfe == [1, 2] and args.bpd_images == 2
    for bad in (["--samples", "100"], ["--nfe", "0"], ["--straightness-steps", "0"]):
        with pytest.raises(SystemExit):
            fm.parse(bad)

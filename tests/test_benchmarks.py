"""The sampler sweep's bookkeeping: `--resume` keeps finished rows and runs only what is missing,
the reference setting first, and never mixes in rows made with another n / batch / seed."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest

SWEEP_SPEC = importlib.util.spec_from_file_location("sweep", Path(__file__).parents[1] / "benchmarks" / "samplers.py")
sweep = importlib.util.module_from_spec(SWEEP_SPEC)
SWEEP_SPEC.loader.exec_module(sweep)


def row(name, settings):
    return {"sampler": name, "settings": settings, "frechet": 1.0}


def test_plan_keeps_finished_rows_and_runs_the_reference_first():
    grid = sweep.FULL
    finished = [row(g[0], dict(g[2])) for g in grid[:3]]
    stray = row("a sampler no longer in the grid", {"steps": 3})
    rows, todo = sweep.plan(grid, finished + [stray])
    assert rows == finished                                   # the stray row is dropped
    assert len(todo) == len(grid) - 3
    assert (todo[0][0], todo[0][2]) == (sweep.REFERENCE[0], sweep.REFERENCE[1])
    assert {sweep._key(g[0], g[2]) for g in todo}.isdisjoint({sweep._key(r["sampler"], r["settings"]) for r in rows})
    # settings compare as dicts: the key order of a JSON row does not matter
    reordered = [row(grid[0][0], dict(reversed(list(grid[0][2].items()))))]
    assert len(sweep.plan(grid, reordered)[1]) == len(grid) - 1


def test_earlier_rows_only_from_a_run_with_the_same_n_batch_seed_and_reference(tmp_path):
    out = tmp_path / "samplers.json"
    made = {"n": 1000, "batch": 500, "seed": 0, "reference": "the 10,000 MNIST test images"}
    args = argparse.Namespace(out=out, **made)
    assert sweep._earlier_rows(args) == []                    # nothing there yet
    earlier = [row("Heun ODE", {"steps": 5})]
    out.write_text(json.dumps(made | {"rows": earlier}))
    assert sweep._earlier_rows(args) == earlier
    for changed in ({"n": 500}, {"batch": 250}, {"seed": 1}, {"reference": "10,000 MNIST training images"}):
        out.write_text(json.dumps(made | changed | {"rows": earlier}))
        assert sweep._earlier_rows(args) == []


@pytest.mark.parametrize("grid", [sweep.FULL, sweep.QUICK, sweep.SELECTION], ids=["full", "quick", "selection"])
def test_grid_settings_are_unique_and_accepted_by_their_samplers(grid):
    import inspect
    keys = [sweep._key(g[0], g[2]) for g in grid]
    assert len(keys) == len(set(keys))
    for _, sampler, settings in grid:
        assert set(settings) <= set(inspect.signature(sampler).parameters), (sampler.__name__, settings)


LIKELIHOOD_SPEC = importlib.util.spec_from_file_location(
    "likelihood_speed", Path(__file__).parents[1] / "benchmarks" / "likelihood_speed.py")
likelihood_speed = importlib.util.module_from_spec(LIKELIHOOD_SPEC)
LIKELIHOOD_SPEC.loader.exec_module(likelihood_speed)


def test_full_test_set_run_resumes_after_an_interrupt_without_changing_the_result(tmp_path, monkeypatch):
    # The bpd evaluation is replaced by a function of the (dequantised) images and probes, so the
    # test checks the bookkeeping: an interrupted run resumed gives the uninterrupted run's per-image
    # list; a resume with another batch size starts afresh.
    import torch
    calls = []

    def fake_bpd_of(model, sde, x, probe, solver, batch, device, dtype, desc, tolerances=None):
        calls.append(len(x))
        if interrupt_at is not None and len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return x.flatten(1).mean(1) + probe.flatten(1).mean(1), 1.0, [1]

    monkeypatch.setattr(likelihood_speed, "bpd_of", fake_bpd_of)
    images = torch.rand(7, 1, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(out, batch, resume, band=None):
        args = argparse.Namespace(seed=0, batch=batch, resume=resume, out=out, model="mnist-ve",
                                  tolerance=1e-5, band=band)
        likelihood_speed.full_test_set(None, None, images, args, torch.device("cpu"), ["--full-test-set"])
        return json.loads(out.read_text())

    interrupt_at = None
    whole = run(tmp_path / "whole.json", 3, resume=False)
    assert whole["complete"] and whole["n"] == 7 and calls == [3, 3, 1]
    assert whole["bpd_mean"] == pytest.approx(sum(whole["bpd"]) / 7)
    calls.clear()
    interrupt_at = 2                                  # killed during the second batch
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "part.json", 3, resume=False)
    part = json.loads((tmp_path / "part.json").read_text())
    assert part["n"] == 3 and not part["complete"]
    calls.clear()
    interrupt_at = None
    (tmp_path / "part.json").write_text(json.dumps(part | {"note": "shared CPU"}))   # a note by hand ...
    resumed = run(tmp_path / "part.json", 3, resume=True)
    assert calls == [3, 1] and resumed["bpd"] == whole["bpd"] and resumed["complete"]
    assert resumed["note"] == "shared CPU"                                          # ... is kept
    calls.clear()
    afresh = run(tmp_path / "part.json", 2, resume=True)   # another batch: nothing kept
    assert calls == [2, 2, 2, 1] and afresh["bpd"] == pytest.approx(whole["bpd"])
    assert "band" not in afresh
    calls.clear()
    banded = run(tmp_path / "part.json", 2, resume=True, band=4.0)   # another band: nothing kept
    assert calls == [2, 2, 2, 1] and banded["band"] == 4.0


def test_plots_draw_the_sweep_and_the_selection(tmp_path):
    rows = [dict(row(*sweep.REFERENCE), nfe=1000, frechet=30.0, frechet_standard_error=3.0, n=1000),
            dict(row("DPM-Solver++ SDE + Tweedie", {"steps": 49, "eta": 6.0}), nfe=50, frechet_standard_error=2.0, n=1000),
            dict(row("DPM-Solver++ SDE + Tweedie", {"steps": 49, "eta": 1.0}), nfe=50, frechet_standard_error=2.0, n=1000)]
    # one line per eta (and per snr of PC), so settings of one sampler are not joined across eta
    from sdelib.viz import sweep_lines
    assert [label for label, _ in sweep_lines(rows)] == \
        ["PC, snr 0.16", "DPM-Solver++ SDE + Tweedie, η = 6", "DPM-Solver++ SDE + Tweedie, η = 1"]
    for selection in (False, True):
        path = tmp_path / f"{selection}.png"
        sweep.draw({"rows": rows, "seed": 0, "reference": "test", "selection": selection}, path)
        assert path.stat().st_size > 10_000


def test_bf16_is_used_only_when_it_leaves_the_bpd_unchanged_and_is_faster():
    import torch
    fp32 = torch.linspace(3.0, 5.0, 64, dtype=torch.float64)
    jitter = 1e-4 * torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = likelihood_speed.bf16_verdict(fp32, fp32 + jitter, fp32_seconds=10.0, bf16_seconds=5.0)
    assert same["use_bf16"] and same["verdict"] == "bf16 used"
    assert same["mean_difference"] == pytest.approx(jitter.mean().item())
    shifted = likelihood_speed.bf16_verdict(fp32, fp32 - 0.005 + jitter, 10.0, 5.0)   # biased, though faster
    assert not shifted["use_bf16"] and not shifted["unchanged"] and "-0.005" in shifted["verdict"]
    slower = likelihood_speed.bf16_verdict(fp32, fp32 + jitter, 10.0, 30.0)          # unchanged, but slower
    assert not slower["use_bf16"] and slower["unchanged"] and "slower" in slower["verdict"]


def test_bf16_check_runs_the_network_in_bf16_and_keeps_the_other_figures(tmp_path, monkeypatch):
    import math
    import types

    import torch
    from sdelib.nets import ScoreNet
    from sdelib.sde import VESDE
    torch.manual_seed(0)
    sde = VESDE(25.0)
    net = ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=16).eval()
    x, t = torch.rand(2, 1, 28, 28), torch.full((2,), 0.5)
    with torch.no_grad():
        exact, rounded = net(x, t), likelihood_speed.bf16_network(net, torch.device("cpu"))(x, t)
    assert rounded.dtype == torch.float32
    relative = ((rounded - exact).norm() / exact.norm()).item()
    assert 1e-5 < relative < 0.05        # bf16 rounding (8-bit mantissa) changes the output, a little

    # The ODE solve is replaced by a function that knows which network it got: the float32 model,
    # or the bf16 wrapper (whose bpd it lowers by 0.001 and whose NFE it quadruples).
    calls = []

    def fake_ode_likelihood(network, sde, x, *, probe, solver, **tolerances):
        calls.append("float32" if network is net else "bf16")
        shift = 0.0 if network is net else 1e-3 * x[0].numel() * math.log(2.0)
        return types.SimpleNamespace(log_p=-x.flatten(1).sum(1).double() + shift, nfe=10 if network is net else 40)

    import sdelib.likelihood
    monkeypatch.setattr(sdelib.likelihood, "ode_likelihood", fake_ode_likelihood)
    out = tmp_path / "likelihood_speed.json"
    out.write_text(json.dumps({"bpd_mean": 3.98, "n": 1000}))
    args = argparse.Namespace(seed=0, batch=3, bf16_check=5, out=out)
    likelihood_speed.bf16_check(net, sde, torch.rand(9, 1, 28, 28), args, torch.device("cpu"), ["--bf16-check", "5"])
    report = json.loads(out.read_text())
    assert report["bpd_mean"] == 3.98 and report["n"] == 1000            # the earlier figures are kept
    check = report["bf16_check"]
    assert calls == ["float32", "float32", "bf16", "bf16"] and check["n"] == 5
    assert check["float32"]["nfe_per_batch"] == [10, 10] and check["bf16"]["nfe_per_batch"] == [40, 40]
    assert check["mean_difference"] == pytest.approx(-1e-3, rel=1e-6)
    assert check["bf16"]["bpd_mean"] == pytest.approx(check["float32"]["bpd_mean"] - 1e-3, rel=1e-9)


def test_tolerance_check_pairs_the_two_paths_and_keeps_the_other_figures(tmp_path, monkeypatch):
    import math
    import types

    import torch
    import sdelib.likelihood

    calls = []

    def fake_ode_likelihood(network, sde, x, *, probe, solver, rtol, **rest):
        calls.append((solver, rtol, len(x)))
        shift = 0.0 if solver == "scipy" else 0.004 * x[0].numel() * math.log(2.0)   # -0.004 bpd
        return types.SimpleNamespace(log_p=-x.flatten(1).sum(1).double() + shift, nfe=100 if solver == "scipy" else 20)

    monkeypatch.setattr(sdelib.likelihood, "ode_likelihood", fake_ode_likelihood)
    out = tmp_path / "likelihood_speed.json"
    out.write_text(json.dumps({"bpd_mean": 3.98, "bf16_check": {"n": 4}}))
    args = argparse.Namespace(seed=0, batch=64, tolerance_check=40, fast_tol=1e-3, out=out)
    likelihood_speed.tolerance_check(None, None, torch.rand(50, 1, 28, 28), args, torch.device("cpu"), [])
    report = json.loads(out.read_text())
    assert report["bpd_mean"] == 3.98 and report["bf16_check"] == {"n": 4}     # kept
    check = report["tolerance_check"]
    assert [c[0] for c in calls] == ["scipy", "scipy", "torchdiffeq"]            # 32 + 8, then 40
    assert {c[1] for c in calls} == {1e-5, 1e-3} and check["n"] == 40
    assert check["mean_difference"] == pytest.approx(-0.004, rel=1e-6) and check["accepted"]
    assert check["fast"]["nfe_per_batch"] == [20] and check["scipy"]["nfe_per_batch"] == [100, 100]


MODEL_SCORES_SPEC = importlib.util.spec_from_file_location(
    "model_scores", Path(__file__).parents[1] / "benchmarks" / "model_scores.py")
model_scores = importlib.util.module_from_spec(MODEL_SCORES_SPEC)
MODEL_SCORES_SPEC.loader.exec_module(model_scores)


def test_model_scores_replace_one_models_entry_and_keep_the_others(tmp_path):
    path = tmp_path / "models.json"
    model_scores.merge(path, "mnist-ve", {"likelihood": {"bpd_mean": 4.0}})
    model_scores.merge(path, "mnist-ve-is", {"likelihood": {"bpd_mean": 3.0}})
    model_scores.merge(path, "mnist-ve", {"likelihood": {"bpd_mean": 3.9}})
    assert json.loads(path.read_text()) == {"mnist-ve": {"likelihood": {"bpd_mean": 3.9}},
                                            "mnist-ve-is": {"likelihood": {"bpd_mean": 3.0}}}


def test_model_bpd_entry_logs_every_image_with_its_seed():
    """The logged per-image values are those dataset_bpd gives again with the logged seed."""
    import torch
    from sdelib.likelihood import dataset_bpd, dequantize, make_probe
    from sdelib.nets import ScoreNet
    from sdelib.sde import VESDE
    torch.manual_seed(0)
    sde = VESDE(25.0)
    net = ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=16).eval().requires_grad_(False)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1)).round()
    entry = model_scores.bpd_entry(net, sde, images, seed=7, tolerance=1e-2, batch=2,
                                   device=torch.device("cpu"), eps=1e-5)
    assert entry["n"] == 3 and len(entry["bpd"]) == 3 and entry["seed"] == 7
    assert entry["eps"] == 1e-5
    generator = torch.Generator().manual_seed(7)
    x = dequantize(images, generator)
    again = dataset_bpd(net, sde, x, make_probe(x, "gaussian", generator), batch_size=2,
                        solver="torchdiffeq", eps=1e-5, rtol=1e-2, atol=1e-2, progress=False)
    assert entry["bpd"] == [round(v, 6) for v in again.bpd.tolist()]


def test_every_sde_stops_sampling_at_the_ve_tutorials_noise_level():
    """sampling_eps gives VE the tutorial's t = 1e-3 exactly and VP / sub-VP the times at which
    their sigma~ is VE's there (0.032), to the 6 digits it keeps."""
    import torch
    from sdelib.sde import SubVPSDE, VESDE, VPSDE
    assert model_scores.sampling_eps(VESDE(25.0)) == 1e-3
    target = VESDE(25.0).scaled_std(torch.tensor(1e-3, dtype=torch.float64))
    for sde in (VPSDE(), SubVPSDE()):
        t = model_scores.sampling_eps(sde)
        sigma = sde.scaled_std(torch.tensor(t, dtype=torch.float64))
        assert t > 1e-3 and abs(sigma / target - 1) < 1e-5, (sde, t)


TRAIN_SPEED_SPEC = importlib.util.spec_from_file_location(
    "train_speed", Path(__file__).parents[1] / "benchmarks" / "train_speed.py")
train_speed = importlib.util.module_from_spec(TRAIN_SPEED_SPEC)
TRAIN_SPEED_SPEC.loader.exec_module(train_speed)


def run_to_bpd(monkeypatch, bpd_per_slice, epochs=10):
    """fast_to_bpd with a training slice that takes 100 steps and an evaluation that reads
    `bpd_per_slice`; returns its result and the number of slices trained."""
    import torch
    slices = []

    def fake_train(model, sde, images, checkpoint, time_budget, **options):
        slices.append(time_budget)
        return {"step": 100 * len(slices)}

    monkeypatch.setattr(train_speed, "train", fake_train)
    monkeypatch.setattr(train_speed, "model_from_checkpoint",
                        lambda state, map_location: (torch.nn.Identity(), None))
    monkeypatch.setattr(train_speed, "bpd_of",
                        lambda *a, **k: (bpd_per_slice[len(slices) - 1], 0.05))
    args = argparse.Namespace(epochs=epochs, batch_size=10, lr=1e-3, bf16=False,
                              channels_last=False, compile=False, eval_every=5.0,
                              bpd_tolerance=1e-3, bpd_target=3.9)
    images = torch.zeros(1000, 1, 28, 28)              # 100 steps per epoch of batch 10
    return train_speed.fast_to_bpd(images, None, "cpu", args), len(slices)


def test_time_to_bpd_stops_at_the_first_evaluation_at_the_target(monkeypatch):
    (seconds, rate, trace), slices = run_to_bpd(monkeypatch, [5.0, 4.2, 3.9, 3.0])
    assert slices == 3 and [row["bpd"] for row in trace] == [5.0, 4.2, 3.9]
    assert seconds == trace[-1]["training_seconds"] and rate == 300 * 10 / seconds


def test_time_to_bpd_is_none_when_the_schedule_ends_first(monkeypatch):
    (seconds, _, trace), slices = run_to_bpd(monkeypatch, [5.0, 4.5, 4.0, 3.0], epochs=2)
    assert seconds is None and slices == 2 and trace[-1]["step"] == 200

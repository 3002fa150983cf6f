"""benchmarks/cutoff_study.py's bookkeeping, on a smoke run: a small untrained ScoreNet for VE and
random images stand in for mnist-ve-fine and MNIST; the JSON goes to tmp_path."""
import importlib.util
import json
import math
from pathlib import Path

import torch

from sdelib.nets import ScoreNet
from sdelib.sde import VESDE

SPEC = importlib.util.spec_from_file_location(
    "cutoff_study", Path(__file__).parents[1] / "benchmarks" / "cutoff_study.py")
study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(study)
SDE = VESDE(25.0)


def test_summary_gives_the_median_and_the_share_above_the_threshold():
    bpd = torch.tensor([1.0, 2.0, 3.0, 4.0, 7.0, 200.0])
    result = study.summary(bpd)
    assert result["share_above"] == 2 / 6               # 7 and 200 are above 5
    assert result["bpd_median"] == 3.0                   # torch's lower median of an even count
    assert math.isclose(result["bpd_mean"], 217 / 6)
    assert result["n"] == 6 and result["bpd"] == bpd.tolist()


def _smoke(monkeypatch, tmp_path, models=None):
    torch.manual_seed(0)
    net = ScoreNet(SDE, channels=(32, 32, 32, 32), embed_dim=32).eval()
    net.trained_eps = 2.5e-7
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(study, "load_pretrained", lambda name, map_location=None: (net, SDE))
    monkeypatch.setattr(study, "load_mnist", lambda split: (images, torch.zeros(4)))
    monkeypatch.setattr(study, "RESULTS", tmp_path / "cutoff_study.json")
    monkeypatch.setattr(study, "MODELS_RESULTS", tmp_path / "models.json")
    (tmp_path / "models.json").write_text(json.dumps(models or {}))
    study.main(["--images", "4", "--batch", "4", "--sigmas", "0.001", "0.0032",
                "--tolerance", "1e-2"])
    return json.loads((tmp_path / "cutoff_study.json").read_text())


def test_each_cutoff_starts_at_the_time_of_its_noise_level(monkeypatch, tmp_path):
    report = _smoke(monkeypatch, tmp_path)
    for cutoff in report["cutoffs"]:
        # VE: sigma~(t)^2 = (25^(2t) - 1) / (2 ln 25), so t = ln(1 + 2 ln 25 sigma~^2) / (2 ln 25)
        t = math.log1p(2 * math.log(25) * cutoff["sigma"] ** 2) / (2 * math.log(25))
        assert math.isclose(cutoff["eps"], t, rel_tol=1e-6)
        assert cutoff["source"] == "measured" and cutoff["n"] == 4
    assert [c["sigma"] for c in report["cutoffs"]] == [0.001, 0.0032]


def test_the_models_own_measurement_is_reused_and_a_rerun_skips_what_is_done(monkeypatch,
                                                                             tmp_path):
    t_001 = math.log1p(2 * math.log(25) * 0.001 ** 2) / (2 * math.log(25))
    stored = {"eps": t_001, "seed": 0, "n": 4, "tolerance": 1e-2, "bpd": [9.0, 9.0, 9.0, 9.0]}
    report = _smoke(monkeypatch, tmp_path, {"mnist-ve-fine": {"likelihood": stored}})
    reused = next(c for c in report["cutoffs"] if c["sigma"] == 0.001)
    assert reused["source"] == "models.json" and reused["bpd"] == stored["bpd"]
    # negative control: the other cut-off is measured, not copied
    other = next(c for c in report["cutoffs"] if c["sigma"] == 0.0032)
    assert other["source"] == "measured" and other["bpd"] != stored["bpd"]
    # a second run with the same arguments measures nothing new
    monkeypatch.setattr(study, "dataset_bpd", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    study.main(["--images", "4", "--batch", "4", "--sigmas", "0.001", "0.0032",
                "--tolerance", "1e-2"])


def test_another_model_writes_its_own_file_and_leaves_the_default_one(monkeypatch, tmp_path):
    _smoke(monkeypatch, tmp_path)
    default = (tmp_path / "cutoff_study.json").read_text()
    study.main(["--model", "mnist-ve-edm-deq", "--images", "4", "--batch", "4",
                "--sigmas", "0.002", "--tolerance", "1e-2"])
    own = json.loads((tmp_path / "cutoff_study_mnist-ve-edm-deq.json").read_text())
    assert own["model"] == "mnist-ve-edm-deq" and [c["sigma"] for c in own["cutoffs"]] == [0.002]
    # negative control: mnist-ve-fine's study is untouched
    assert (tmp_path / "cutoff_study.json").read_text() == default

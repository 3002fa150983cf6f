"""benchmarks/band_study.py's bookkeeping, on a smoke run: a small untrained ScoreNet for VE and
random images stand in for a shipped model and MNIST; the JSON goes to tmp_path."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sdelib.nets import ScoreNet
from sdelib.sde import VESDE

SPEC = importlib.util.spec_from_file_location(
    "band_study", Path(__file__).parents[1] / "benchmarks" / "band_study.py")
study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(study)
SDE = VESDE(25.0)


def _smoke(monkeypatch, tmp_path, bands=("0", "0.5")):
    torch.manual_seed(0)
    net = ScoreNet(SDE, channels=(32, 32, 32, 32), embed_dim=32).eval()
    net.trained_eps = 1e-3
    splits = {"train": torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1)),
              "test": torch.full((4, 1, 28, 28), 0.5)}
    asked = []
    monkeypatch.setattr(study, "load_pretrained", lambda name, map_location=None: (net, SDE))
    monkeypatch.setattr(study, "load_mnist",
                        lambda split: asked.append(split) or (splits[split], torch.zeros(4)))
    out = tmp_path / "band_study.json"
    study.main(["--images", "4", "--batch", "4", "--bands", *bands, "--tolerance", "1e-2",
                "--out", str(out)])
    return json.loads(out.read_text()), asked


def test_bands_are_chosen_on_training_images_from_the_models_own_cutoff(monkeypatch, tmp_path):
    report, asked = _smoke(monkeypatch, tmp_path)
    assert asked == ["train"] and "training images" in report["images"]
    assert report["eps"] == 1e-3 and [b["band"] for b in report["bands"]] == [0, 0.5]
    assert all(b["n"] == 4 for b in report["bands"])
    # a band of half a noise std clips the untrained net's inputs: the figures change
    # (the control: band 0 is the net as it is, so a band that did nothing would equal it)
    assert report["bands"][0]["bpd"] != report["bands"][1]["bpd"]


def test_a_rerun_skips_the_bands_already_measured(monkeypatch, tmp_path):
    _smoke(monkeypatch, tmp_path)
    monkeypatch.setattr(study, "dataset_bpd", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    report, _ = _smoke(monkeypatch, tmp_path)
    assert [b["band"] for b in report["bands"]] == [0, 0.5]
    with pytest.raises(AssertionError):          # the control: a new band is measured
        _smoke(monkeypatch, tmp_path, bands=("2",))

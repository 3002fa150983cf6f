"""Score nets, checkpoints, resumable training, distributed training, pretrained loading."""
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from helpers import assert_close

from sdelib import train as train_module
from sdelib.data import ring_mixture
from sdelib.nets import MLPScoreNet, MNISTClassifier, NoiseConditionalClassifier, ScoreNet, count_parameters, net_from_config, noise_condition
from sdelib.sde import GeometricVESDE, SubVPSDE, VESDE, VPSDE
from sdelib import pretrained as pretrained_module
from sdelib.metrics import classifier_accuracy
from sdelib.pretrained import (CheckpointError, export_pretrained, load_checkpoint, load_pretrained,
                               model_from_checkpoint, save_checkpoint)
from sdelib.train import ema_decay_at, ema_update, learning_rate, train, train_classifier

ALL_SDES = [VESDE(25.0), GeometricVESDE(0.01, 50.0), VPSDE(), SubVPSDE()]


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: s.name)
def test_scorenet_maps_images_to_scores_of_the_same_shape_for_every_sde(sde):
    torch.manual_seed(0)
    net = ScoreNet(sde)
    x, t = torch.rand(3, 1, 28, 28), torch.tensor([0.01, 0.5, 1.0])
    assert net(x, t).shape == x.shape
    assert count_parameters(net) == 1_115_425  # the tutorial's U-Net


def test_scorenet_output_is_divided_by_the_marginal_std():
    """Same weights, two SDEs: the outputs differ exactly by the ratio of their std(t)."""
    torch.manual_seed(0)
    ve, vp = ScoreNet(VESDE(25.0)), ScoreNet(VPSDE())
    vp.load_state_dict(ve.state_dict())
    x, t = torch.rand(2, 1, 28, 28), torch.tensor([0.1, 0.7])
    ratio = (VESDE(25.0).marginal_std(t) / VPSDE().marginal_std(t))[:, None, None, None]
    assert torch.allclose(vp(x, t), ve(x, t) * ratio, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("x,match", [(torch.rand(2, 3, 28, 28), "shape"), (torch.rand(2, 784), "shape"),
                                     (torch.rand(2, 1, 32, 32), "shape")])
def test_scorenet_rejects_wrong_data_shape(x, match):
    with pytest.raises(ValueError, match=match):
        ScoreNet(VESDE(25.0))(x, torch.rand(2))


def test_mlp_score_net_rejects_mismatched_time_batch():
    with pytest.raises(ValueError, match="shape"):
        MLPScoreNet(VESDE(25.0))(torch.randn(4, 2), torch.rand(3))


def tiny_run(tmp_path, name="ckpt.pt", **kwargs):
    torch.manual_seed(0)
    sde = VESDE(10.0)
    model = MLPScoreNet(sde, hidden=16, depth=2)
    data = ring_mixture().sample(96, torch.Generator().manual_seed(0)).float()
    settings = dict(epochs=3, batch_size=16, lr=1e-3, warmup_steps=2, device="cpu", progress=False,
                    checkpoint=tmp_path / name)
    settings.update(kwargs)
    return train(model, sde, data, **settings)


def test_interrupted_and_resumed_training_equals_an_uninterrupted_run(tmp_path):
    full = tiny_run(tmp_path, "full.pt")
    first = tiny_run(tmp_path, "resumed.pt", max_steps=7)   # stops mid-epoch 1 (6 steps per epoch)
    assert first["step"] == 7
    resumed = tiny_run(tmp_path, "resumed.pt")
    assert resumed["step"] == full["step"] == 18
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"


def test_an_epoch_split_by_a_resume_is_timed_whole(tmp_path, monkeypatch):
    """The seconds of an epoch that a resume splits count both parts: with a clock that
    advances 1 s per step (and not otherwise), every epoch of 6 steps takes 6 s."""
    import sdelib.train as train_module
    clock = {"now": 0.0}
    monkeypatch.setattr(train_module.time, "monotonic", lambda: clock["now"])
    original = train_module.ema_update

    def ticking_ema_update(*args):
        clock["now"] += 1.0
        original(*args)

    monkeypatch.setattr(train_module, "ema_update", ticking_ema_update)
    tiny_run(tmp_path, "split.pt", max_steps=9)              # stops mid-epoch 1
    resumed = tiny_run(tmp_path, "split.pt")
    assert [entry["seconds"] for entry in resumed["history"]] == [6.0, 6.0, 6.0]


def test_ctrl_c_saves_a_checkpoint_that_resumes_to_the_same_result(tmp_path, monkeypatch):
    full = tiny_run(tmp_path, "full.pt")
    calls = {"n": 0}
    original = train_module.dsm_loss

    def interrupt_at_step_10(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "dsm_loss", interrupt_at_step_10)
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path, "interrupted.pt")
    assert load_checkpoint(tmp_path / "interrupted.pt")["step"] == 10
    monkeypatch.setattr(train_module, "dsm_loss", original)
    resumed = tiny_run(tmp_path, "interrupted.pt")
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name])


def test_training_lowers_the_held_out_dsm_loss_and_records_history(tmp_path):
    from sdelib.metrics import dsm_test_loss

    held_out = ring_mixture().sample(2000, torch.Generator().manual_seed(1)).float()
    state = tiny_run(tmp_path, epochs=20, lr=3e-3, ema_decay=0.9)  # EMA horizon ~10 of 120 steps
    trained, sde = model_from_checkpoint(state)
    untrained = net_from_config(state["net"], state["sde"])
    after = dsm_test_loss(trained, sde, held_out, seed=0)        # same t and z for both nets
    before = dsm_test_loss(untrained, sde, held_out, seed=0)
    assert before.mean - after.mean > 4 * (before.standard_error + after.standard_error)
    assert [h["epoch"] for h in state["history"]] == list(range(20))


def test_checkpoint_save_load_rebuilds_a_model_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = ScoreNet(VPSDE(beta_min=0.2, beta_max=15.0))
    state = {"format": pretrained_module.CHECKPOINT_FORMAT, "sde": net.sde.config(), "net": net.config(),
             "model": net.state_dict(), "ema": None, "history": [], "settings": {}, "step": 0, "epoch": 0}
    save_checkpoint(state, tmp_path / "net.pt")
    rebuilt, sde = model_from_checkpoint(tmp_path / "net.pt")
    x, t = torch.rand(2, 1, 28, 28), torch.tensor([0.2, 0.9])
    assert sde.config() == {"name": "vp", "beta_min": 0.2, "beta_max": 15.0}
    assert torch.equal(rebuilt(x, t), net.eval()(x, t))


def test_truncated_or_corrupt_checkpoint_raises_a_clear_error(tmp_path):
    state = tiny_run(tmp_path, epochs=1)
    raw = (tmp_path / "ckpt.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    for name in ("truncated.pt", "garbage.pt"):
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(tmp_path / name)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an sdelib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    assert state["step"] == 6


def test_resuming_with_another_net_or_sde_is_refused(tmp_path):
    tiny_run(tmp_path, epochs=1)
    data = torch.randn(96, 2)
    with pytest.raises(CheckpointError, match="SDE"):
        train(MLPScoreNet(VPSDE(), hidden=16, depth=2), VPSDE(), data, epochs=1, batch_size=16,
              device="cpu", progress=False, checkpoint=tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="net"):
        train(MLPScoreNet(VESDE(10.0), hidden=32, depth=2), VESDE(10.0), data, epochs=1, batch_size=16,
              device="cpu", progress=False, checkpoint=tmp_path / "ckpt.pt")


def test_unknown_net_name_is_refused():
    with pytest.raises(ValueError, match="unknown net"):
        net_from_config({"name": "ResNet"}, {"name": "ve", "sigma": 25.0})


@pytest.mark.parametrize("kwargs,match", [(dict(batch_size=0), "batch_size"), (dict(epochs=0), "epochs"),
                                          (dict(batch_size=1000), "larger than the dataset")])
def test_train_rejects_bad_settings(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_run(tmp_path, **kwargs)


def test_learning_rate_warms_up_then_decays_to_zero():
    lrs = [learning_rate(s, 100, 1e-3, 10, "cosine") for s in range(101)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert lrs[55] == pytest.approx(5e-4) and lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(50, 100, 1e-3, 10, "constant") == 1e-3


def test_ema_with_warm_up_forgets_the_initial_weights():
    # The weight an EMA still gives the initial weights after K steps is prod_k d_k. Without warm-up,
    # 0.999 ** 1000 = 0.37; with d_k = min(0.999, (1 + k) / (10 + k)) it is tiny.
    assert [ema_decay_at(k, 0.999) for k in (0, 1, 8991, 10**6)] == [0.1, 2 / 11, 0.999, 0.999]
    ema, model = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(ema.weight, 1.0)                 # the "initial weights"
    torch.nn.init.constant_(model.weight, 0.0)               # every later iterate
    for k in range(1000):
        ema_update(ema, model, ema_decay_at(k, 0.999))
    # prod_{k<1000} d_k, with d_k = (1+k)/(10+k) up to k = 8991 (the telescoping product 9!/(1000...1009))
    expected = 1.0
    for k in range(1000):
        expected *= (1 + k) / (10 + k)
    assert ema.weight.item() == pytest.approx(expected, rel=1e-4) and expected < 1e-20
    assert 0.999 ** 1000 > 0.36                              # the negative control: no warm-up


def test_load_pretrained_checks_the_hash_and_explains_how_to_retrain(tmp_path, monkeypatch):
    tiny_run(tmp_path, epochs=1)
    monkeypatch.setattr(pretrained_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    log = export_pretrained(tmp_path / "ckpt.pt", tmp_path / "shipped" / "toy.pt")
    model, sde = load_pretrained("toy")
    assert json.loads((tmp_path / "shipped" / "toy.json").read_text())["sha256"] == log["sha256"]
    assert sde.config() == {"name": "ve", "sigma": 10.0} and not model.training
    with open(tmp_path / "shipped" / "toy.pt", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(CheckpointError, match="sha256.*Retrain"):
        load_pretrained("toy")
    with pytest.raises(CheckpointError, match="no shipped checkpoint 'nothing'"):
        load_pretrained("nothing")


def test_cli_stops_on_budget_resumes_and_exports_only_a_complete_run(tmp_path, monkeypatch):
    import sdelib.data

    images = torch.rand(48, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sdelib.data, "load_mnist", lambda split: (images, torch.zeros(48, dtype=torch.long)))
    monkeypatch.setattr(train_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    monkeypatch.setattr(pretrained_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    argv = ["--epochs", "2", "--batch-size", "16", "--warmup-steps", "1", "--device", "cpu",
            "--out", str(tmp_path / "run.pt"), "--export", "tiny"]
    train_module.main(argv + ["--max-steps", "4"])            # stopped at step 4 of 6: not exported
    assert load_checkpoint(tmp_path / "run.pt")["step"] == 4
    assert not (tmp_path / "shipped" / "tiny.pt").exists()
    train_module.main(argv)                                   # resumed to the end: exported
    log = json.loads((tmp_path / "shipped" / "tiny.json").read_text())
    assert log["steps"] == 6 and len(log["history"]) == 2 and "CPU" in log["machine"]
    assert log["command"].startswith("python -m sdelib.train --epochs 2")
    assert log["wall_seconds"] == pytest.approx(sum(e["seconds"] for e in log["history"]), abs=0.1)
    model, sde = load_pretrained("tiny")
    assert sde.name == "ve" and count_parameters(model) == 1_115_425


def test_cli_init_starts_from_a_shipped_model_and_records_it(tmp_path, monkeypatch):
    """--init NAME: the run's first weights are the shipped model's (a step at lr 1e-12 moves them
    by ~1e-12, Adam's steps being ~lr), not a fresh net's (the control, same seed: ~1e-3 away);
    the exported log names the start and its hash; options that build another net are refused."""
    import sdelib.data

    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sdelib.data, "load_mnist", lambda split: (images, torch.zeros(32)))
    monkeypatch.setattr(train_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    monkeypatch.setattr(pretrained_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    common = ["--batch-size", "16", "--warmup-steps", "1", "--device", "cpu"]
    train_module.main(["--epochs", "2"] + common + ["--out", str(tmp_path / "base.pt"),
                                                    "--export", "base"])
    base = load_pretrained("base")[0].state_dict()

    def distance_from_base(out, *extra):
        train_module.main(["--epochs", "1", "--lr", "1e-12", "--max-steps", "1"] + common +
                          list(extra) + ["--out", str(tmp_path / out)])
        weights = load_checkpoint(tmp_path / out)["model"]
        return max((weights[k] - v).abs().max().item() for k, v in base.items())

    assert distance_from_base("warm.pt", "--init", "base") < 1e-9
    assert distance_from_base("cold.pt") > 1e-4                 # the control: no --init
    train_module.main(["--epochs", "1"] + common + ["--init", "base", "--out",
                                                    str(tmp_path / "more.pt"), "--export", "more"])
    log = json.loads((tmp_path / "shipped" / "more.json").read_text())
    base_hash = json.loads((tmp_path / "shipped" / "base.json").read_text())["sha256"]
    assert log["init"] == {"name": "base", "sha256": base_hash}
    with pytest.raises(CheckpointError, match="--init base.*options build"):
        train_module.main(["--epochs", "1"] + common + ["--noise-input", "log_sigma", "--init",
                                                        "base", "--out", str(tmp_path / "x.pt")])


def test_cli_trains_and_exports_a_class_conditional_net_with_its_labels(tmp_path, monkeypatch):
    import sdelib.data

    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(32) % 10
    monkeypatch.setattr(sdelib.data, "load_mnist", lambda split: (images, labels))
    monkeypatch.setattr(train_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    monkeypatch.setattr(pretrained_module, "CHECKPOINT_DIR", tmp_path / "shipped")
    train_module.main(["--epochs", "1", "--batch-size", "16", "--warmup-steps", "1",
                       "--device", "cpu", "--class-conditional", "--label-dropout", "0.2",
                       "--out", str(tmp_path / "run.pt"), "--export", "tiny-cfg"])
    log = json.loads((tmp_path / "shipped" / "tiny-cfg.json").read_text())
    assert log["settings"]["class_conditional"] and log["settings"]["label_dropout"] == 0.2
    model, _ = load_pretrained("tiny-cfg")
    assert model.num_classes == 10 and model.null_label == 10
    assert count_parameters(model) == 1_115_425 + 11 * 256     # one vector per class and null


def test_cli_log_sigma_net_is_normalised_over_the_noise_levels_it_is_trained_on(tmp_path,
                                                                                monkeypatch):
    """With --eps 0.0135 (sub-VP) the net's noise input maps sigma~(0.0135) to 0, not
    sigma~(1e-5): the training times' range is the [0, 1] of its time embedding."""
    import sdelib.data

    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(sdelib.data, "load_mnist", lambda split: (images, torch.zeros(16)))
    train_module.main(["--sde", "subvp", "--eps", "0.0135", "--epochs", "1", "--batch-size",
                       "16", "--warmup-steps", "1", "--device", "cpu", "--noise-input",
                       "log_sigma", "--out", str(tmp_path / "run.pt")])
    state = load_checkpoint(tmp_path / "run.pt")
    assert state["net"]["noise_eps"] == state["settings"]["eps"] == 0.0135
    model, sde = model_from_checkpoint(state)
    ends = torch.tensor([0.0135, 1.0])
    assert torch.allclose(noise_condition(sde, ends, "log_sigma", model.noise_eps),
                          torch.tensor([0.0, 1.0]), atol=1e-6)
    # the default would have put the training range's bottom well above 0
    assert noise_condition(sde, ends[:1], "log_sigma", 1e-5).item() > 0.3


def test_train_rejects_integer_images(tmp_path):
    with pytest.raises(TypeError, match="floating point"):
        train(MLPScoreNet(VESDE(10.0)), VESDE(10.0), torch.zeros(32, 2, dtype=torch.uint8), epochs=1,
              batch_size=16, device="cpu", progress=False)


def _halves(n, seed):
    """Images whose label says which half (top 0 / bottom 1) is brighter, under heavy pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.8
    for i, label in enumerate(labels.tolist()):
        images[i, :, 14 * label:14 * label + 14] += 0.2
    return images, labels


@pytest.mark.parametrize("shuffle", [False, True], ids=["true-labels", "shuffled-labels"])
def test_classifier_learns_a_rule_and_not_shuffled_labels(tmp_path, shuffle):
    images, labels = _halves(512, 0)
    if shuffle:                                             # negative control: nothing to learn
        labels = labels[torch.randperm(512, generator=torch.Generator().manual_seed(1))]
    test = _halves(400, 2)
    torch.manual_seed(0)
    state = train_classifier(MNISTClassifier(), images, labels, epochs=3, batch_size=32, device="cpu",
                             test=test, progress=False)
    accuracy = state["history"][-1]["test_accuracy"]
    # 400 held-out images: the SE of an accuracy near 1/2 is 0.025, so chance lies in [0.4, 0.6]
    # at 4 SE; the rule is learnable to ~100 %.
    assert (accuracy > 0.95) if not shuffle else (0.4 < accuracy < 0.6), accuracy
    save_checkpoint(state, tmp_path / "classifier.pt")
    model, sde = model_from_checkpoint(tmp_path / "classifier.pt")
    assert sde is None and torch.equal(model(test[0][:5]), state_model_logits(state, test[0][:5]))


def test_noise_conditional_classifier_learns_the_rule_until_the_noise_hides_it(tmp_path):
    sde = VESDE(25.0)
    images, labels = _halves(512, 0)
    test = _halves(400, 2)
    torch.manual_seed(0)
    state = train_classifier(NoiseConditionalClassifier(sde), images, labels, epochs=4, batch_size=32,
                             device="cpu", test=test, sde=sde, progress=False)
    model, model_sde = model_from_checkpoint(state)
    assert model_sde.config() == sde.config()
    clean = classifier_accuracy(model, *test, t=1e-3)
    # A brightness difference of 0.2 per half (14 x 28 pixels) is visible at small noise and hidden
    # at t = 1 (std ~ 10): the sum over a half differs by 78, its noise std is 10 sqrt(392) ~ 200.
    hidden = classifier_accuracy(model, *test, t=1.0, sde=sde)
    assert clean > 0.95 and 0.4 < hidden < 0.75, (clean, hidden)
    assert state["history"][-1]["test_accuracy"] == clean


def state_model_logits(state, images):
    model = MNISTClassifier()
    model.load_state_dict(state["model"])
    return model.eval()(images)


# ---- distributed: 2 CPU processes (gloo) compute exactly the single-process run ------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        state = tiny_run(out, "ddp.pt", checkpoint=out / "ddp.pt" if rank == 0 else None)
        if rank == 0:
            torch.save(state["model"], out / "ddp-model.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_matches_single_process_with_the_same_global_batch(tmp_path):
    single = tiny_run(tmp_path, "single.pt")
    mp.start_processes(_ddp_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True,
                       start_method="fork")
    ddp = torch.load(tmp_path / "ddp-model.pt", weights_only=True)
    for name, value in single["model"].items():
        # Same global batch and noise; only the order of floating-point summation differs
        # (mean of two half-batch means, all-reduced), so agreement is to float32 rounding.
        assert torch.allclose(value, ddp[name], rtol=1e-4, atol=1e-6), name
    assert load_checkpoint(tmp_path / "ddp.pt")["settings"]["world_size"] == 2


def test_scorenet_fed_log_sigma_keeps_its_setting_in_the_checkpoint_config():
    from sdelib.nets import noise_condition

    sde = VESDE(25.0)
    net = ScoreNet(sde, noise_input="log_sigma", noise_eps=1e-5)
    config = net.config()
    assert config["noise_input"] == "log_sigma" and config["noise_eps"] == 1e-5
    rebuilt = net_from_config(config, sde.config())
    assert rebuilt.noise_input == "log_sigma"
    # The tutorial's net keeps the config older checkpoints were saved with.
    assert ScoreNet(sde).config() == {"name": "ScoreNet", "channels": [32, 64, 128, 256],
                                      "embed_dim": 256, "image_channels": 1}
    # ln sigma~ rescaled: 0 at noise_eps, 1 at T, and ln sigma~ linear in between.
    unit = float(sde.time_of_scaled_std(torch.tensor(1.0, dtype=torch.float64)))   # sigma~ = 1
    t = torch.tensor([1e-5, 1.0, unit], dtype=torch.float64)
    c = noise_condition(sde, t, "log_sigma", 1e-5)
    low, high = sde.scaled_std(t[:2]).log()
    expected = torch.tensor([0.0, 1.0, float(-low / (high - low))], dtype=torch.float64)
    assert_close(c, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(noise_condition(sde, t, "time", 1e-5), t)
    with pytest.raises(ValueError, match="noise_input"):
        ScoreNet(sde, noise_input="sigma")


def test_training_with_importance_sampling_and_dequantisation_records_both(tmp_path):
    state = tiny_run(tmp_path, weighting="likelihood", importance_sampling=True, epochs=1)
    assert state["settings"]["importance_sampling"] is True
    assert state["settings"]["dequantize"] is False
    assert all(math.isfinite(entry["loss"]) for entry in state["history"])
    torch.manual_seed(0)
    sde = VESDE(25.0)
    images = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    run = train(ScoreNet(sde, channels=(32, 32, 32, 32), embed_dim=16), sde, images, epochs=1,
                batch_size=16, device="cpu", progress=False, dequantize=True,
                weighting="likelihood", importance_sampling=True)
    assert run["settings"]["dequantize"] is True and run["step"] == 2


def test_fp16_precision_trains_with_a_gradient_scaler_and_float32_is_unchanged(tmp_path):
    from sdelib.device import Precision

    plain = tiny_run(tmp_path, "plain.pt", epochs=1)
    explicit = tiny_run(tmp_path, "explicit.pt", epochs=1,
                        precision=Precision(torch.float32, False, "float32"))
    for name, weight in plain["model"].items():                  # the same steps, bit for bit
        assert torch.equal(weight, explicit["model"][name]), name
    assert plain["settings"]["autocast"] == "float32"
    # fp16 with the gradient scaler (what a compute-capability 7.x GPU gets) runs on the CPU too.
    half = tiny_run(tmp_path, "half.pt", epochs=2, precision=Precision(torch.float16, True, "fp16"))
    assert half["settings"]["autocast"] == "float16"
    assert all(math.isfinite(entry["loss"]) for entry in half["history"])
    changed = [name for name, weight in half["model"].items()
               if not torch.equal(weight, plain["model"][name])]
    assert changed                                               # fp16 rounding: other weights

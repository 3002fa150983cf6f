"""Bad input at the public boundary: one row per case, each a call, the exception it must raise and
a pattern its message must match (naming the argument). The last test counts the table: a row is
clear if the type and message match, silently wrong if the call returns without raising."""
import json
import re
import struct
import zipfile

import numpy as np
import pytest
import torch

from sdelib import viz
from sdelib.controllable import classifier_guided_score, inpaint
from sdelib.data import GaussianMixture, gaussian, load_mnist, ring_mixture
from sdelib.likelihood import dataset_bpd, image_bpd, ode_likelihood
from sdelib.losses import dsm_loss, sample_time
from sdelib.metrics import bootstrap_standard_error, frechet_distance
from sdelib.nets import MLPScoreNet, ScoreNet
from sdelib.pretrained import (CheckpointError, load_checkpoint, make_checkpoint,
                               model_from_checkpoint, save_checkpoint)
from sdelib.samplers import (dpm_solver_sde, edm_stochastic, euler_maruyama, heun_ode,
                             predictor_corrector, probability_flow_ode)
from sdelib.sde import GeometricVESDE, SubVPSDE, VESDE, VPSDE
from sdelib.train import learning_rate, train, train_classifier

SDE = VESDE(25.0)
MIX = ring_mixture()
SCORE = MIX.score_fn(SDE)
NAN, INF = float("nan"), float("inf")
X = torch.randn(4, 2)
X_NAN = X.clone().index_put_((torch.tensor([1]), torch.tensor([0])), torch.tensor(NAN))
DATA = MIX.sample(64, torch.Generator().manual_seed(0)).float()


def tiny_net():
    torch.manual_seed(0)
    return MLPScoreNet(VESDE(10.0), hidden=8, depth=1)


def train_tiny(**kwargs):
    settings = dict(epochs=1, batch_size=16, device="cpu", progress=False, max_steps=1)
    settings.update(kwargs)
    images = settings.pop("images", DATA)
    return train(tiny_net(), VESDE(10.0), images, **settings)


def em(**kwargs):
    settings = dict(steps=5)
    settings.update(kwargs)
    score = settings.pop("score", SCORE)
    shape = settings.pop("shape", (4, 2))
    return euler_maruyama(score, SDE, shape, **settings)


def mixture(covs=None, weights=None):
    """A two-component mixture in 2-D with the given covariances and weights."""
    return GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], covs, weights)


EYE, INDEFINITE = [[1.0, 0.0], [0.0, 1.0]], [[1.0, 2.0], [2.0, 1.0]]   # eigenvalues 3 and -1


def slider_with(fmt, values):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def render(value):
        fig, ax = plt.subplots(figsize=(1, 1))
        return fig

    return viz.slider(render, values, label="k", fmt=fmt, live=False)


def zero_score(x, t):
    return torch.zeros_like(x)


def nan_late(x, t):
    return torch.where(t[:, None] < 0.5, torch.full_like(x, NAN), -x)


def inf_score(x, t):
    return torch.full_like(x, INF)


# --- checkpoint files for the loading rows ---------------------------------------------------
def flip_tensor_byte(source, target, rewrite_zip: bool):
    """Copy the checkpoint `source` to `target` with one byte flipped in the middle of its largest
    tensor's storage (a `*/data/*` member of the zip): with `rewrite_zip`, written back by zipfile
    with fresh CRCs (no zip-level check can notice); without, flipped in place in the raw bytes
    (the CRC then disagrees, which torch.load checks only sometimes)."""
    with zipfile.ZipFile(source) as zf:
        infos = zf.infolist()
        members = {info.filename: zf.read(info) for info in infos}
    storages = [info for info in infos if "/data/" in info.filename and not
                info.filename.endswith("serialization_id")]
    largest = max(storages, key=lambda info: info.file_size)
    assert largest.compress_type == zipfile.ZIP_STORED and largest.file_size >= 64
    if rewrite_zip:
        data = bytearray(members[largest.filename])
        data[len(data) // 2] ^= 0x01
        members[largest.filename] = bytes(data)
        with zipfile.ZipFile(target, "w") as zf:
            for info in infos:
                zf.writestr(info, members[info.filename])
        return
    raw = bytearray(source.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[largest.header_offset + 26:
                                                  largest.header_offset + 30])
    start = largest.header_offset + 30 + name_len + extra_len          # the member's bytes
    assert raw[start:start + largest.file_size] == members[largest.filename]
    raw[start + largest.file_size // 2] ^= 0x01
    target.write_bytes(bytes(raw))


def checkpoint_files(tmp_path):
    net = tiny_net()
    state = make_checkpoint(net, net.sde, history=[], step=0, epoch=0.0, settings={})
    good = tmp_path / "good.pt"
    save_checkpoint(state, good)
    files = {"good": good}

    class Code:
        def __reduce__(self):
            return (print, ("this would run",))

    torch.save({"format": "x", "payload": Code()}, tmp_path / "code.pt")
    files["code"] = tmp_path / "code.pt"
    raw = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(raw[: len(raw) // 3])
    files["truncated"] = tmp_path / "truncated.pt"
    flipped = bytearray(raw)
    index = raw.find(b"data/0") + 200       # inside the first tensor's bytes
    flipped[index] ^= 0xFF
    for name, log in [("flipped", None), ("badjson", "{not json"), ("nosha", {"file": "x"}),
                      ("vpjson", "vp")]:
        path = tmp_path / f"{name}.pt"
        path.write_bytes(bytes(flipped) if name == "flipped" else raw)
        from sdelib.provenance import sha256
        if name == "flipped":
            log = {"sha256": sha256(good)}
        if name == "vpjson":
            log = {"sha256": sha256(path), "sde": VPSDE().config()}
        text = log if isinstance(log, str) else json.dumps(log)
        path.with_suffix(".json").write_text(text)
        files[name] = path
    missing = {k: v for k, v in state.items() if k != "net"}
    save_checkpoint(missing, tmp_path / "nonet.pt")
    files["nonet"] = tmp_path / "nonet.pt"
    wrong = dict(state, net=dict(state["net"], hidden=16))
    save_checkpoint(wrong, tmp_path / "mismatch.pt")
    files["mismatch"] = tmp_path / "mismatch.pt"
    for name, rewrite in [("damaged", True), ("damaged_raw", False)]:
        files[name] = tmp_path / f"{name}.pt"
        flip_tensor_byte(good, files[name], rewrite)
    (tmp_path / "mnist-test.pt").write_bytes(b"\x80\x02 truncated")
    files["mnist_root"] = tmp_path
    return files


ARG = r"({name})"   # rows give the argument's name; the message must contain it

ROWS = [
    # SDE constructors
    ("VESDE sigma=inf", lambda f: VESDE(INF), ValueError, r"sigma.*inf"),
    ("VESDE sigma=nan", lambda f: VESDE(NAN), ValueError, r"sigma.*nan"),
    ("VESDE sigma='25'", lambda f: VESDE("25"), TypeError, r"sigma.*'25'"),
    ("VESDE sigma=1e200", lambda f: VESDE(1e200), ValueError, r"sigma.*overflow"),
    ("GeometricVESDE sigma_max=inf", lambda f: GeometricVESDE(0.01, INF), ValueError, "sigma_max"),
    ("GeometricVESDE sigma_min=nan", lambda f: GeometricVESDE(NAN, 50), ValueError, "sigma_min"),
    ("VPSDE beta_max=inf", lambda f: VPSDE(0.1, INF), ValueError, "beta_max"),
    ("SubVPSDE beta_min=nan", lambda f: SubVPSDE(NAN, 20), ValueError, "beta_min"),
    ("VPSDE beta_min=True", lambda f: VPSDE(True, 20.0), TypeError, "beta_min"),
    # marginal_prob
    ("marginal_prob x0 NaN", lambda f: SDE.marginal_prob(X_NAN, torch.full((4,), 0.5)),
     ValueError, r"x0.*samples \[1\]"),
    ("marginal_prob x0 integer", lambda f: SDE.marginal_prob(torch.ones(4, 2, dtype=torch.long),
                                                            0.5), TypeError, r"x0.*int64"),
    # samplers: shapes, steps, eps, generator, x_init, score
    ("em empty batch", lambda f: em(shape=(0, 2)), ValueError, r"shape.*\(0, 2\)"),
    ("em shape float", lambda f: em(shape=(4, 2.5)), ValueError, r"shape"),
    ("em shape int", lambda f: em(shape=4), TypeError, r"shape.*4"),
    ("em steps=2.5", lambda f: em(steps=2.5), ValueError, r"steps.*2\.5"),
    ("em steps=True", lambda f: em(steps=True), TypeError, r"steps.*True"),
    ("em steps='5'", lambda f: em(steps="5"), TypeError, r"steps.*'5'"),
    ("em steps=0", lambda f: em(steps=0), ValueError, r"steps.*>= 1.*0"),
    ("em eps=0", lambda f: em(eps=0.0), ValueError, r"eps.*\(0, 1\)"),
    ("em eps=1", lambda f: em(eps=1.0), ValueError, r"eps.*\(0, 1\)"),
    ("em eps=nan", lambda f: em(eps=NAN), ValueError, r"eps.*nan"),
    ("em generator int", lambda f: em(generator=0), TypeError, r"generator.*torch\.Generator"),
    ("em generator numpy", lambda f: em(generator=np.random.default_rng(0)), TypeError,
     r"generator.*Generator"),
    ("em x_init NaN", lambda f: em(x_init=X_NAN), ValueError, r"x_init.*\[1\]"),
    ("em x_init inf", lambda f: em(x_init=torch.full((4, 2), INF)), ValueError, r"x_init"),
    ("em x_init long", lambda f: em(x_init=torch.zeros(4, 2, dtype=torch.long)), TypeError,
     r"x_init.*int64"),
    ("em x_init numpy", lambda f: em(x_init=np.zeros((4, 2))), TypeError, r"x_init.*ndarray"),
    ("em score (batch, 1)", lambda f: em(score=lambda x, t: x[:, :1]), ValueError,
     r"score_fn.*\(4, 1\).*\(4, 2\)"),
    ("em score float", lambda f: em(score=lambda x, t: 1.0), TypeError, r"score_fn.*1\.0"),
    ("em score not callable", lambda f: em(score=3), TypeError, r"score_fn.*function"),
    ("em score integer", lambda f: em(score=lambda x, t: x.long()), TypeError,
     r"score_fn.*int64"),
    ("em score NaN late", lambda f: em(score=nan_late), FloatingPointError,
     r"euler_maruyama.*step 3 \(t = 0\.25"),
    ("em callback not callable", lambda f: em(callback=1), TypeError, r"callback"),
    ("em sde string", lambda f: euler_maruyama(SCORE, "ve", (4, 2)), TypeError, r"sde.*'ve'"),
    ("pc snr=inf", lambda f: predictor_corrector(SCORE, SDE, (4, 2), steps=5, snr=INF),
     ValueError, r"snr.*inf"),
    ("pc zero score", lambda f: predictor_corrector(zero_score, SDE, (4, 2), steps=5),
     FloatingPointError, r"predictor_corrector.*step 0.*norm 0"),
    ("pc corrector_steps=-1", lambda f: predictor_corrector(SCORE, SDE, (4, 2), steps=5,
                                                           corrector_steps=-1),
     ValueError, r"corrector_steps"),
    ("pc steps np.int64 then NaN", lambda f: predictor_corrector(nan_late, SDE, (4, 2),
                                                                steps=np.int64(5)),
     FloatingPointError, r"predictor_corrector.*step 3"),
    ("heun non-finite score", lambda f: heun_ode(inf_score, SDE, (4, 2), steps=4),
     FloatingPointError, r"heun_ode.*step 0"),
    ("heun rho=inf", lambda f: heun_ode(SCORE, SDE, (4, 2), steps=4, rho=INF), ValueError, "rho"),
    ("edm churn=nan", lambda f: edm_stochastic(SCORE, SDE, (4, 2), steps=4, churn=NAN),
     ValueError, "churn"),
    ("edm order=True", lambda f: edm_stochastic(SCORE, SDE, (4, 2), steps=4, order=True),
     TypeError, "order"),
    ("dpm eta=inf", lambda f: dpm_solver_sde(SCORE, SDE, (4, 2), steps=4, eta=INF),
     ValueError, "eta"),
    ("dpm NaN late", lambda f: dpm_solver_sde(nan_late, SDE, (4, 2), steps=4),
     FloatingPointError, r"dpm_solver_sde.*step \d"),
    ("ode rtol=0", lambda f: probability_flow_ode(SCORE, SDE, (4, 2), rtol=0.0), ValueError,
     "rtol"),
    ("ode max_nfe=0", lambda f: probability_flow_ode(SCORE, SDE, (4, 2), max_nfe=0),
     ValueError, "max_nfe"),
    ("ode unknown method", lambda f: probability_flow_ode(SCORE, SDE, (4, 2), method="rk4"),
     ValueError, r"scipy method 'rk4'"),
    ("ode score (batch, 1)", lambda f: probability_flow_ode(lambda x, t: x[:, :1], SDE, (4, 2)),
     ValueError, r"score_fn.*\(4, 1\)"),
    # controllable
    ("inpaint observation NaN", lambda f: inpaint(SCORE, SDE, X_NAN, torch.ones(2), steps=5),
     ValueError, r"observation.*\[1\]"),
    ("inpaint generator int", lambda f: inpaint(SCORE, SDE, X, torch.ones(2), steps=5,
                                                generator=1), TypeError, "generator"),
    ("inpaint empty", lambda f: inpaint(SCORE, SDE, torch.zeros(0, 2), torch.ones(2), steps=5),
     ValueError, r"shape.*\(0, 2\)"),
    ("guidance strength=inf", lambda f: classifier_guided_score(SCORE, lambda x, t: x, 0,
                                                                strength=INF),
     ValueError, "strength"),
    # likelihood
    ("ode_likelihood x NaN", lambda f: ode_likelihood(SCORE, SDE, X_NAN), ValueError,
     r"x.*\[1\]"),
    ("ode_likelihood empty", lambda f: ode_likelihood(SCORE, SDE, torch.zeros(0, 2)),
     ValueError, r"x.*\(0, 2\)"),
    ("ode_likelihood x long", lambda f: ode_likelihood(SCORE, SDE, torch.zeros(4, 2,
                                                                              dtype=torch.long)),
     TypeError, r"x.*int64"),
    ("ode_likelihood eps=2", lambda f: ode_likelihood(SCORE, SDE, X, eps=2.0), ValueError,
     r"eps.*\(0, 1\)"),
    ("ode_likelihood divergence", lambda f: ode_likelihood(SCORE, SDE, X, divergence="hutch"),
     ValueError, r"divergence 'hutch'"),
    ("ode_likelihood generator", lambda f: ode_likelihood(SCORE, SDE, X, generator=3),
     TypeError, "generator"),
    ("image_bpd integer images", lambda f: image_bpd(SCORE, SDE, torch.zeros(2, 1, 28, 28,
                                                                           dtype=torch.uint8)),
     TypeError, r"images.*uint8"),
    ("image_bpd empty", lambda f: image_bpd(SCORE, SDE, torch.zeros(0, 1, 28, 28)), ValueError,
     r"images.*\(0, 1, 28, 28\)"),
    ("dataset_bpd batch_size=2.5", lambda f: dataset_bpd(SCORE, SDE, torch.rand(4, 2),
                                                         batch_size=2.5, progress=False),
     ValueError, r"batch_size.*2\.5"),
    # losses
    ("dsm_loss empty", lambda f: dsm_loss(SCORE, SDE, torch.zeros(0, 2)), ValueError,
     r"x0.*\(0, 2\)"),
    ("dsm_loss x0 NaN", lambda f: dsm_loss(SCORE, SDE, X_NAN), ValueError, r"x0.*\[1\]"),
    ("dsm_loss x0 long", lambda f: dsm_loss(SCORE, SDE, torch.ones(4, 2, dtype=torch.long)),
     TypeError, r"x0.*int64"),
    ("dsm_loss eps=1", lambda f: dsm_loss(SCORE, SDE, X, eps=1.0), ValueError, r"eps.*\(0, 1\)"),
    ("dsm_loss score (batch, 1)", lambda f: dsm_loss(lambda x, t: x[:, :1], SDE, X), ValueError,
     r"score_fn.*\(4, 1\)"),
    ("dsm_loss NaN score", lambda f: dsm_loss(lambda x, t: x * NAN, SDE, X), FloatingPointError,
     r"dsm_loss.*score_fn"),
    ("sample_time batch=0", lambda f: sample_time(SDE, 0), ValueError, r"batch.*0"),
    # train / train_classifier
    ("train grad_clip=-1", lambda f: train_tiny(grad_clip=-1), ValueError, r"grad_clip.*-1"),
    ("train ema_decay=-1", lambda f: train_tiny(ema_decay=-1), ValueError, r"ema_decay.*\[0, 1\)"),
    ("train ema_decay=1", lambda f: train_tiny(ema_decay=1.0), ValueError, r"ema_decay.*1"),
    ("train schedule", lambda f: train_tiny(schedule="linear"), ValueError,
     r"schedule 'linear'.*cosine"),
    ("learning_rate schedule", lambda f: learning_rate(600, 1000, 1e-3, 500, "cosin"),
     ValueError, r"schedule 'cosin'"),
    ("train lr=0", lambda f: train_tiny(lr=0.0), ValueError, r"lr.*> 0"),
    ("train lr=nan", lambda f: train_tiny(lr=NAN), ValueError, r"lr.*nan"),
    ("train max_steps=0", lambda f: train_tiny(max_steps=0), ValueError, r"max_steps.*0"),
    ("train eps=1", lambda f: train_tiny(eps=1.0), ValueError, r"eps.*\(0, 1\)"),
    ("train eps=-1", lambda f: train_tiny(eps=-1.0), ValueError, r"eps.*\(0, 1\)"),
    ("train batch_size=2.5", lambda f: train_tiny(batch_size=2.5), ValueError,
     r"batch_size.*2\.5"),
    ("train batch_size np.int64(0)", lambda f: train_tiny(batch_size=np.int64(0)), ValueError,
     r"batch_size.*0"),
    ("train images NaN", lambda f: train_tiny(images=DATA.index_put((torch.tensor([5]),),
                                                                    torch.tensor(NAN))),
     ValueError, r"images.*\[5\]"),
    ("train images long", lambda f: train_tiny(images=DATA.long()), TypeError, r"images.*int64"),
    ("train weighting", lambda f: train_tiny(weighting="l2"), ValueError, r"weighting 'l2'"),
    ("train_classifier lr=-1", lambda f: train_classifier(torch.nn.Linear(2, 2), DATA,
                                                          torch.zeros(64, dtype=torch.long),
                                                          lr=-1.0, device="cpu",
                                                          progress=False),
     ValueError, r"lr.*-1"),
    ("train_classifier float labels", lambda f: train_classifier(torch.nn.Linear(2, 2), DATA,
                                                                 torch.zeros(64), device="cpu",
                                                                 progress=False),
     TypeError, r"labels.*float32"),
    # nets
    ("ScoreNet t=0", lambda f: ScoreNet(SDE)(torch.rand(2, 1, 28, 28), torch.zeros(2)),
     ValueError, r"ScoreNet.*t must be > 0"),
    ("MLPScoreNet t<0", lambda f: tiny_net()(X, torch.full((4,), -0.1)), ValueError,
     r"MLPScoreNet.*t must be > 0"),
    ("MLPScoreNet t='0.5'", lambda f: tiny_net()(X, "0.5"), TypeError,
     r"MLPScoreNet: t must be a number or a tensor.*'0\.5'"),
    ("ScoreNet t=0.0 (a float)", lambda f: ScoreNet(SDE)(torch.rand(2, 1, 28, 28), 0.0),
     ValueError, r"ScoreNet.*t must be > 0"),
    # toy data
    ("mixture weights all 0", lambda f: mixture(weights=[0.0, 0.0]), ValueError,
     r"weights must not all be 0.*\[0\.0, 0\.0\]"),
    ("mixture weights NaN", lambda f: mixture(weights=[1.0, NAN]), ValueError,
     r"weights must be finite.*nan"),
    ("mixture weights inf", lambda f: mixture(weights=[INF, 1.0]), ValueError,
     r"weights must be finite.*inf"),
    ("mixture weights negative", lambda f: mixture(weights=[2.0, -1.0]), ValueError,
     r"weights must be non-negative.*-1\.0"),
    ("mixture weights overflow", lambda f: mixture(weights=[1e308, 1e308]), ValueError,
     r"weights sum to inf"),
    ("mixture covs indefinite", lambda f: mixture([EYE, INDEFINITE]), ValueError,
     r"covs\[1\] \(component 1\) must be positive definite.*eigenvalue is -1"),
    ("mixture covs singular", lambda f: mixture([[[1.0, 1.0], [1.0, 1.0]], EYE]), ValueError,
     r"covs\[0\] \(component 0\) must be positive definite"),
    ("mixture covs not symmetric", lambda f: mixture([[[1.0, 0.5], [0.0, 1.0]], EYE]),
     ValueError, r"covs\[0\] \(component 0\) must be symmetric.*up to 0\.5"),
    ("mixture covs NaN", lambda f: mixture([EYE, [[1.0, 0.0], [0.0, NAN]]]), ValueError,
     r"covs\[1\] \(component 1\) has NaN"),
    ("mixture diagonal covs negative", lambda f: mixture([[1.0, 1.0], [1.0, -0.5]]), ValueError,
     r"covs\[1\].*positive definite.*-0\.5"),
    # viz
    ("slider fmt {:d} of floats", lambda f: slider_with("{:d}", [1.0, 2.5]), ValueError,
     r"fmt='\{:d\}' cannot format the value 1\.0 \(float\).*Unknown format code 'd'"),
    ("slider fmt {1}", lambda f: slider_with("{1}", [1, 2]), ValueError,
     r"fmt='\{1\}' cannot format the value 1 .*IndexError"),
    ("slider fmt None", lambda f: slider_with(None, [1, 2]), TypeError,
     r"fmt must be a format string.*None"),
    # metrics
    ("frechet n <= d", lambda f: frechet_distance(torch.randn(50, 128), torch.randn(500, 128)),
     ValueError, r"features_a.*50 samples.*singular.*129"),
    ("frechet other dims", lambda f: frechet_distance(torch.randn(50, 3), torch.randn(50, 4)),
     ValueError, r"features_a and features_b.*dimension"),
    ("bootstrap n_boot=1", lambda f: bootstrap_standard_error(lambda a: a.mean(), torch.randn(9),
                                                              n_boot=1),
     ValueError, r"n_boot.*>= 2.*1"),
    ("bootstrap n_boot=2.0", lambda f: bootstrap_standard_error(lambda a: a.mean(),
                                                                torch.randn(9), n_boot=2.0),
     ValueError, r"n_boot.*2\.0"),
    # checkpoints and caches
    ("checkpoint with code", lambda f: load_checkpoint(f["code"]), CheckpointError,
     r"code\.pt.*contains code.*refused"),
    ("checkpoint truncated", lambda f: load_checkpoint(f["truncated"]), CheckpointError,
     r"truncated\.pt.*corrupt or truncated"),
    ("flipped byte, sidecar sha256", lambda f: model_from_checkpoint(f["flipped"]),
     CheckpointError, r"flipped\.pt has sha256"),
    ("sidecar not JSON", lambda f: model_from_checkpoint(f["badjson"]), CheckpointError,
     r"badjson\.json.*not readable JSON"),
    (".pt VE, .json VP", lambda f: model_from_checkpoint(f["vpjson"]), CheckpointError,
     r"vpjson\.pt holds sde.*'ve'.*says.*'vp'"),
    ("checkpoint without net", lambda f: model_from_checkpoint(f["nonet"]), CheckpointError,
     r"nonet\.pt lacks \['net'\]"),
    ("state-dict mismatch", lambda f: model_from_checkpoint(f["mismatch"]), CheckpointError,
     r"mismatch\.pt: its weights do not fit"),
    ("tensor byte flipped, zip rewritten", lambda f: model_from_checkpoint(f["damaged"]),
     CheckpointError, r"damaged\.pt is damaged: its contents have sha256.*corrupted"),
    ("tensor byte flipped in place", lambda f: model_from_checkpoint(f["damaged_raw"]),
     CheckpointError, r"damaged_raw\.pt (is damaged|is corrupt)"),
    ("truncated MNIST cache", lambda f: load_mnist("test", root=f["mnist_root"]), RuntimeError,
     r"mnist-test\.pt is truncated or corrupt.*delete"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return checkpoint_files(tmp_path_factory.mktemp("bad_input"))


def outcome(row, files):
    """'clear', 'unclear' (another type, or a message that does not match) or 'silent'."""
    _, call, kind, pattern = row
    try:
        call(files)
    except Exception as exc:  # noqa: BLE001 - every outcome is classified
        if isinstance(exc, kind) and re.search(pattern, str(exc)):
            return "clear", exc
        return "unclear", exc
    return "silent", None


@pytest.mark.parametrize("row", ROWS, ids=[row[0] for row in ROWS])
def test_bad_input_is_refused_clearly(row, files):
    result, exc = outcome(row, files)
    assert result == "clear", f"{row[0]}: {result}: {type(exc).__name__}: {exc}"
    assert "weights_only" not in str(exc)


def test_the_table_is_clear_and_nothing_is_silently_wrong(files, capsys):
    results = [outcome(row, files)[0] for row in ROWS]
    counts = {kind: results.count(kind) for kind in ("clear", "unclear", "silent")}
    with capsys.disabled():
        print(f"\nbad-input table: rows {len(ROWS)} / clear {counts['clear']} / unclear "
              f"{counts['unclear']} / silently wrong {counts['silent']}")
    assert len(ROWS) >= 60
    assert counts["silent"] == 0
    assert counts["clear"] >= 0.98 * len(ROWS)


def test_valid_integer_like_arguments_are_accepted():
    """numpy integers are integers: steps=np.int64(5) samples as steps=5."""
    g = torch.Generator().manual_seed(0)
    a = euler_maruyama(SCORE, SDE, (4, 2), steps=np.int64(5), generator=g).samples
    b = euler_maruyama(SCORE, SDE, (np.int64(4), 2), steps=5,
                       generator=torch.Generator().manual_seed(0)).samples
    assert torch.equal(a, b)


# --- negative controls: valid input next to the invalid rows works and gives the right value -----
def test_undamaged_checkpoint_loads_with_identical_weights(files):
    """The file the damaged ones were copied from loads, with the weights that were saved."""
    model, _ = model_from_checkpoint(files["good"])
    expected = tiny_net().state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)
    assert "digest" not in load_checkpoint(files["good"])     # checked and removed
    assert "digest" in torch.load(files["good"], weights_only=True)


def test_checkpoint_without_a_digest_still_loads(tmp_path):
    """Older files hold no digest: they load as before."""
    net = tiny_net()
    state = make_checkpoint(net, net.sde, history=[], step=0, epoch=0.0, settings={})
    torch.save(state, tmp_path / "old.pt")
    model, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert torch.equal(model(X, torch.full((4,), 0.5)), net.eval()(X, torch.full((4,), 0.5)))


def test_a_number_t_is_t_for_every_sample():
    """net(x, 0.5) is net(x, t) with t = 0.5 for each sample, for both score nets (and a 0-d t)."""
    torch.manual_seed(0)
    image_net, images = ScoreNet(SDE).eval(), torch.rand(3, 1, 28, 28)
    full = image_net(images, torch.full((3,), 0.5))
    assert torch.equal(image_net(images, 0.5), full)
    assert torch.equal(image_net(images, torch.tensor(0.5)), full)
    assert not torch.equal(image_net(images, 0.6), full)          # t is used, not ignored
    point_net = tiny_net()
    assert torch.equal(point_net(X, 0.5), point_net(X, torch.full((4,), 0.5)))
    assert torch.equal(point_net(X, 1), point_net(X, torch.ones(4)))


def test_mixture_next_to_the_bad_weights_and_covariances_is_exact():
    """Zero weights are allowed (that component drops out), weights are normalised, and a positive
    definite covariance with off-diagonal entries gives the closed-form Gaussian density."""
    x = torch.randn(5, 2, dtype=torch.float64)
    second = gaussian([1.0, 0.5], EYE)
    only_second = mixture(weights=[0.0, 3.0])
    assert only_second.weights.tolist() == [0.0, 1.0]
    assert torch.allclose(only_second.log_prob(x), second.log_prob(x), rtol=1e-12, atol=0)
    assert torch.allclose(only_second.score(x), second.score(x), rtol=1e-12, atol=1e-15)
    correlated = [[1.0, 0.5], [0.5, 1.0]]                       # eigenvalues 1.5 and 0.5
    reference = torch.distributions.MultivariateNormal(
        torch.tensor([-1.0, 0.0], dtype=torch.float64),
        torch.tensor(correlated, dtype=torch.float64))
    assert torch.allclose(gaussian([-1.0, 0.0], correlated).log_prob(x), reference.log_prob(x),
                          rtol=1e-12, atol=0)


def test_nearly_symmetric_covariance_is_accepted_and_made_symmetric():
    """An asymmetry at float32 rounding (1e-7 relative) passes and is averaged away."""
    nearly = torch.tensor([[2.0, 0.5], [0.5 + 2e-7, 1.0]], dtype=torch.float64)
    covs = mixture(torch.stack([nearly, torch.eye(2, dtype=torch.float64)])).covs
    assert torch.equal(covs[0], covs[0].T)
    assert abs(covs[0, 0, 1].item() - (0.5 + 1e-7)) < 1e-15


def test_slider_formats_values_its_fmt_can_format():
    """The same slider with integer values for '{:d}', and '{:.1f}' for the floats, works."""
    assert slider_with("{:d}", [1, 2]).labels == ["k = 1", "k = 2"]
    assert slider_with("{:.1f}", [1.0, 2.5]).labels == ["k = 1.0", "k = 2.5"]

"""Checkpoints and the models shipped inside the package.

A checkpoint is a plain dict, loadable with `torch.load(weights_only=True)`, that carries the
settings of its SDE and net, so `model_from_checkpoint` rebuilds the model and its SDE without
being told what they were. `save_checkpoint` writes atomically (a temporary file, then a rename)
and stores in the file a sha256 of its contents (`checkpoint_digest`: every tensor's dtype, shape
and bytes, and the plain data around them), which `load_checkpoint` checks, so a training
checkpoint that was damaged on disk or in transfer is refused, not loaded with wrong weights.
Files without one (older ones, and the shipped models, which have their sha256 beside them) load
as before.

The shipped models live in `sdelib/checkpoints/<name>.pt`, each with a JSON log beside it (sha256,
settings, loss per epoch, machine, wall time, command). `load_pretrained(name)` checks the sha256
before loading, and so does `model_from_checkpoint` whenever such a log lies beside the file;
`export_pretrained` writes that pair from a finished training checkpoint. `SHIPPED` names each
shipped model and the command that retrains it.

Faults. A Ctrl-C (SIGINT) that arrives while a checkpoint is written is held until the write is
complete (`deferred_sigint`), then delivered, so the file is whole and `train`'s Ctrl-C path
can still make its final save. The temporary file is removed on every path; the ones a SIGKILL
leaves are removed by `remove_stale_temporaries` when the next training on that output starts,
under `training_lock`, an OS lock (flock) that dies with its process: two trainings never write
one output, and a resume after a crash is never blocked. A refused file says why: "contains code,
refused" (a pickle that is not plain data) is told apart from "corrupt or truncated".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import signal
import tempfile
import threading
from pathlib import Path

try:
    import fcntl
except ImportError:                                    # Windows: no flock, no lock
    fcntl = None

import torch
from torch import nn

from .nets import net_from_config
from .provenance import sha256

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_DIR", "SHIPPED", "CheckpointError", "CheckpointLockedError",
    "make_checkpoint", "checkpoint_digest", "deferred_sigint", "save_checkpoint",
    "remove_stale_temporaries", "training_lock", "load_checkpoint", "require_keys",
    "model_from_checkpoint", "export_pretrained", "load_pretrained",
]

CHECKPOINT_FORMAT = "sdelib-checkpoint-v1"
DIGEST_KEY = "digest"                                  # the key of `checkpoint_digest` in a file
CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

# name -> (what it is, the command that retrains and exports it)
SHIPPED = {
    "mnist-ve": ("ScoreNet for the tutorial's VE SDE (sigma = 25), the tutorial's recipe",
                 "python -m sdelib.train --sde ve --epochs 30 --batch-size 128 --lr 5e-4 "
                 "--channels-last --out mnist-ve-train.pt --export mnist-ve"),
    "mnist-ve-is": ("ScoreNet for the tutorial's VE SDE trained for likelihood: importance-sampled "
                    "t, conditioned on ln sigma~, dequantised images",
                    "python -m sdelib.train --sde ve --epochs 30 --batch-size 128 --lr 5e-4 "
                    "--channels-last --weighting likelihood --importance-sampling "
                    "--noise-input log_sigma --dequantize --out mnist-ve-is-train.pt "
                    "--export mnist-ve-is"),
    "mnist-ve-fine": ("mnist-ve-is's recipe trained to a smaller noise floor: from t = 2.5e-7, where "
                      "sigma~ = 5e-4 (an eighth of a grey level), for 60 epochs",
                      "python -m sdelib.train --sde ve --eps 2.5e-7 --epochs 60 --batch-size 128 "
                      "--lr 5e-4 --channels-last --weighting likelihood --importance-sampling "
                      "--noise-input log_sigma --dequantize --out mnist-ve-fine-train.pt "
                      "--export mnist-ve-fine"),
    "mnist-ve-edm": ("ScoreNet for the tutorial's VE SDE trained with EDM's recipe for samples: "
                     "log-normal noise levels, EDM's loss weighting and preconditioning (the U-Net "
                     "outputs the denoiser), sigma_data = 0.33, 60 epochs",
                     "python -m sdelib.train --sde ve --eps 1e-5 --epochs 60 --batch-size 128 "
                     "--lr 5e-4 --channels-last --weighting edm --sigma-data 0.33 "
                     "--output denoiser --noise-input log_sigma --out mnist-ve-edm-train.pt "
                     "--export mnist-ve-edm"),
    "mnist-ve-edm-deq": ("mnist-ve-edm's recipe (EDM's noise levels, weighting and preconditioning) "
                         "on dequantised images from t = 1e-6, where sigma~ = 0.001 (a quarter "
                         "of a grey level), 60 epochs",
                         "python -m sdelib.train --sde ve --eps 1e-6 --epochs 60 --batch-size 128 "
                         "--lr 5e-4 --channels-last --weighting edm --sigma-data 0.33 "
                         "--output denoiser --noise-input log_sigma --dequantize "
                         "--out mnist-ve-edm-deq-train.pt --export mnist-ve-edm-deq"),
    "mnist-ve-is-edm": ("mnist-ve-is's likelihood draws and weighting (ln sigma~^2 uniform, g^2) "
                        "with mnist-ve-edm's preconditioning (the U-Net outputs the denoiser), "
                        "on dequantised images from t = 1e-6, where sigma~ = 0.001, 60 epochs",
                        "python -m sdelib.train --sde ve --eps 1e-6 --epochs 60 --batch-size 128 "
                        "--lr 5e-4 --channels-last --weighting likelihood --importance-sampling "
                        "--sigma-data 0.33 --output denoiser --noise-input log_sigma --dequantize "
                        "--out mnist-ve-is-edm-train.pt --export mnist-ve-is-edm"),
    "mnist-vp": ("ScoreNet for the VP SDE (beta 0.1 to 20) with mnist-ve-is's likelihood recipe, "
                 "trained from eps = 1e-4, where sigma~ is VE's sigma~(1e-5)",
                 "python -m sdelib.train --sde vp --eps 1e-4 --epochs 30 --batch-size 128 "
                 "--lr 5e-4 --channels-last --weighting likelihood --importance-sampling "
                 "--noise-input log_sigma --dequantize --out mnist-vp-train.pt "
                 "--export mnist-vp"),
    "mnist-subvp": ("ScoreNet for the sub-VP SDE (beta 0.1 to 20) with mnist-ve-is's likelihood "
                    "recipe, trained from eps = 0.0135, where sigma~ is VE's sigma~(1e-5)",
                    "python -m sdelib.train --sde subvp --eps 0.0135 --epochs 30 "
                    "--batch-size 128 --lr 5e-4 --channels-last --weighting likelihood "
                    "--importance-sampling --noise-input log_sigma --dequantize "
                    "--out mnist-subvp-train.pt --export mnist-subvp"),
    "mnist-rf": ("ScoreNet for the rectified-flow path (1 - t) x0 + t z whose U-Net outputs the "
                 "probability-flow velocity, trained by flow matching from eps = 1e-3",
                 "python -m sdelib.train --sde rf --eps 1e-3 --epochs 30 --batch-size 128 "
                 "--lr 5e-4 --channels-last --weighting flow_matching --output velocity "
                 "--dequantize --out mnist-rf-train.pt --export mnist-rf"),
    "mnist-ve-cfg": ("class-conditional ScoreNet for the tutorial's VE SDE with a null label, "
                     "for classifier-free guidance",
                     "python -m sdelib.train --sde ve --epochs 20 --batch-size 128 --lr 5e-4 "
                     "--channels-last --noise-input log_sigma --class-conditional "
                     "--label-dropout 0.1 --out mnist-ve-cfg-train.pt --export mnist-ve-cfg"),
    "mnist-classifier": ("MNISTClassifier, the evaluation classifier",
                         "python benchmarks/train_classifier.py"),
    "mnist-noisy-classifier": ("NoiseConditionalClassifier for classifier guidance",
                               "python benchmarks/train_classifier.py --noise-conditional"),
}


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, corrupt, truncated or for another model."""


class CheckpointLockedError(CheckpointError):
    """Another running process trains to the same output."""


def make_checkpoint(model: nn.Module, sde, *, history: list, step: int, epoch: float,
                    settings: dict, ema: nn.Module | None = None, **extra) -> dict:
    """The checkpoint dict of a model (and its EMA), with the settings that rebuild it."""
    return {"format": CHECKPOINT_FORMAT, "sde": sde.config() if sde is not None else None,
            "net": model.config(), "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None, "history": history,
            "step": step, "epoch": epoch, "settings": settings, **extra}


class _NoData(Exception):
    """A tensor without data (on the 'meta' device): nothing to hash."""


def _feed(h, value) -> None:
    """Add `value` to the hash h: tensors by dtype, shape and bytes (from a CPU copy, so the
    device does not matter); dicts by their items in sorted order of keys; lists and tuples item
    by item; anything else by its type and repr (exact for numbers, strings, None)."""
    def tag(kind: str, text: str = "") -> None:
        h.update(f"{kind}:{len(text)}:{text};".encode("utf-8", "surrogatepass"))

    if torch.is_tensor(value):
        if value.is_meta:
            raise _NoData
        tag("tensor", f"{value.dtype}{tuple(value.shape)}")
        data = value.detach().resolve_conj().resolve_neg()
        if data.layout != torch.strided:
            data = data.to_dense()
        data = data.cpu().contiguous().reshape(-1)
        h.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    elif isinstance(value, dict):
        tag("dict", str(len(value)))
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        tag("list", str(len(value)))
        for item in value:
            _feed(h, item)
    else:
        tag(type(value).__name__, repr(value))


def checkpoint_digest(state: dict) -> str | None:
    """sha256 (hex) of a checkpoint's contents, its own digest entry left out; the same for the
    same contents on any device. None if a tensor holds no data (loaded to the 'meta' device)."""
    h = hashlib.sha256()
    try:
        _feed(h, {key: value for key, value in state.items() if key != DIGEST_KEY})
    except _NoData:
        return None
    return h.hexdigest()


class deferred_sigint:                                  # noqa: N801 - used like a function
    """`with deferred_sigint():` holds a SIGINT (Ctrl-C) that arrives inside the block until the
    block has finished, then delivers it to the handler that was installed before (by default
    KeyboardInterrupt). Without it, a Ctrl-C inside torch.save's zip writer surfaces as a
    RuntimeError that replaces the KeyboardInterrupt and loses the file. Signals can only be
    handled in the main thread; elsewhere the block runs unprotected."""

    def __enter__(self):
        self.received, self.previous = False, None
        self.active = threading.current_thread() is threading.main_thread()
        if self.active:
            try:
                self.previous = signal.signal(signal.SIGINT, self._record)
            except ValueError:                          # not the main interpreter
                self.active = False
        return self

    def _record(self, signum, frame):
        self.received = True

    def __exit__(self, kind, exc, tb):
        if self.active:
            previous = self.previous if self.previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGINT, previous)
            if self.received:                           # now, to the previous handler
                signal.raise_signal(signal.SIGINT)
        return False


def _temporary_pattern(path: Path) -> re.Pattern:
    """The names mkstemp gives `save_checkpoint`'s temporary files for `path`."""
    return re.compile(re.escape(path.name) + r"[A-Za-z0-9_]{8}\.tmp")


def save_checkpoint(state: dict, path: str | Path) -> None:
    """Write `state`, with its `checkpoint_digest` under "digest", atomically: to a temporary file
    in the same folder, then rename. A SIGINT during the write is delivered once the file is
    complete (`deferred_sigint`); the temporary file is removed on every path except a SIGKILL
    (see `remove_stale_temporaries`)."""
    path = Path(path)
    state = {**state, DIGEST_KEY: checkpoint_digest(state)}   # before the write: Ctrl-C stays free
    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_sigint():
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                torch.save(state, f)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; checkpoints are ordinary files
            os.replace(tmp, path)
            tmp = None
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files of `path` that a killed `save_checkpoint` left (`<name>XXXXXXXX
    .tmp`); returns them. Call it only while holding `training_lock(path)`: a running save's
    temporary file has the same form."""
    path = Path(path)
    pattern, removed = _temporary_pattern(path), []
    if path.parent.is_dir():
        for candidate in path.parent.iterdir():
            if pattern.fullmatch(candidate.name) and candidate.is_file():
                candidate.unlink(missing_ok=True)
                removed.append(candidate)
    return removed


@contextlib.contextmanager
def training_lock(path: str | Path):
    """Hold an exclusive, non-blocking flock on `<path>.lock` for the block: a second training
    on the same output is refused (CheckpointLockedError) while the first runs. The OS drops the
    lock when its process dies, even by SIGKILL, so a resume is never blocked by a crash. The lock
    file itself stays (removing it would let two processes lock two different files)."""
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    if fcntl is None:
        yield lock_path
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CheckpointLockedError(
                f"another training is writing {path}: process {holder} holds {lock_path}. "
                "Wait for it to finish, stop it, or train to another output; the lock is "
                "released when that process ends (also if it is killed)") from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            yield lock_path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _without_torch_advice(exc: BaseException) -> str:
    """torch's error text without its advice to load with weights_only=False (which would run
    whatever code the file holds)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and "weights_only" not in line
            and "Weights only load failed" not in line and "file an issue" not in line]
    return "; ".join(kept)[:300] or type(exc).__name__


_CODE_REFUSED = re.compile(r"GLOBAL|global|Unsupported class|unsupported class")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True; a clear CheckpointError if it is not one of ours,
    or if its contents do not match the digest stored in it (which is checked and removed: the
    dict returned is the one that was saved)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _without_torch_advice(exc)
        if _CODE_REFUSED.search(str(exc)):
            raise CheckpointError(f"{path} is not a checkpoint: it contains code (objects that "
                                  f"are not tensors or plain data), refused ({reason})") from None
        raise CheckpointError(f"{path} is corrupt or truncated ({reason})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is corrupt or truncated "
                              f"({type(exc).__name__}: {_without_torch_advice(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an sdelib checkpoint (format {CHECKPOINT_FORMAT})")
    if DIGEST_KEY in state:                             # older files have none
        stored = state.pop(DIGEST_KEY)
        actual = checkpoint_digest(state)
        if actual is not None and stored != actual:
            raise CheckpointError(
                f"{path} is damaged: its contents have sha256 digest {actual[:16]}..., but the "
                f"digest saved in it is {str(stored)[:16]}...; the file was corrupted on disk or "
                "in transfer (or edited without save_checkpoint). Restore it from a copy, "
                "or train again")
    return state


def require_keys(state: dict, keys, where) -> None:
    """CheckpointError naming the keys of `keys` that `state` lacks."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{where} lacks {missing}: it was not written by this version of "
                              "sdelib, or was edited")


def _sidecar(path: Path, required: bool = False, advice: str = "") -> dict | None:
    """The JSON log beside `path` (`<stem>.json`), after checking `path` against its sha256;
    None if there is none (an error if `required`). Broken logs raise CheckpointError."""
    meta_path = path.with_suffix(".json")
    if not meta_path.exists():
        if required:
            raise CheckpointError(f"{path} has no log {meta_path.name} beside it. {advice}")
        return None
    try:
        log = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"the log {meta_path} of {path.name} is not readable JSON "
                              f"({type(exc).__name__}: {exc}); repair or delete it. "
                              f"{advice}") from None
    if not isinstance(log, dict) or ("sha256" not in log and required):
        raise CheckpointError(f"the log {meta_path} of {path.name} has no 'sha256' entry; "
                              f"repair or delete it. {advice}")
    if "sha256" in log:
        expected, actual = log["sha256"], sha256(path)
        if actual != expected:
            raise CheckpointError(f"{path} has sha256 {actual}, expected {expected} (from "
                                  f"{meta_path.name}): the file is corrupt or was changed. "
                                  f"{advice}")
    return log


def model_from_checkpoint(path_or_state, use_ema: bool = True, map_location="cpu"):
    """Rebuild (model, sde) from a checkpoint; the EMA weights by default. Model in eval mode, on
    the device its weights were loaded to (`map_location`, or a dict's own device).

    A path with a JSON log beside it (`export_pretrained`'s `<stem>.json`, holding a sha256) is
    checked against that hash first, and its SDE and net must agree with the file's."""
    if isinstance(path_or_state, dict):
        return _model_from_state(path_or_state, use_ema, "the checkpoint dict")
    path = Path(path_or_state)
    log = _sidecar(path) if path.exists() else None
    state = load_checkpoint(path, map_location)
    _check_against_log(state, log, path)
    return _model_from_state(state, use_ema, str(path))


def _check_against_log(state: dict, log: dict | None, path: Path) -> None:
    for key in ("sde", "net"):
        if log is not None and key in log and key in state and log[key] != state[key]:
            raise CheckpointError(f"{path} holds {key} {state[key]} but its log "
                                  f"{path.with_suffix('.json').name} says {log[key]}: one of the "
                                  "two was replaced; re-export the pair")


def _model_from_state(state: dict, use_ema: bool, where: str):
    if not isinstance(state, dict):
        raise CheckpointError(f"{where} is not a checkpoint dict, got {type(state).__name__}")
    require_keys(state, ("net", "sde", "model"), where)
    try:
        model = net_from_config(state["net"], state["sde"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{where} has net {state['net']} and SDE {state['sde']}, which "
                              f"build no model: {type(exc).__name__}: {exc}") from None
    weights = state["ema"] if use_ema and state.get("ema") is not None else state["model"]
    # the model where its weights were loaded (`map_location`): a GPU model from a GPU load
    devices = {w.device for w in weights.values() if torch.is_tensor(w)} if isinstance(
        weights, dict) else set()
    if len(devices) == 1:
        model.to(devices.pop())
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4]) or str(exc)
        raise CheckpointError(f"{where}: its weights do not fit its net {state['net']} "
                              f"({detail[:300]})") from None
    settings = state.get("settings") or {}
    if "eps" in settings and hasattr(model, "sde"):
        # the smallest time the model was trained on: samplers and likelihoods start there by
        # default and refuse to go below it (checks.check_eps)
        model.trained_eps = float(settings["eps"])
    return model.eval(), getattr(model, "sde", None)


def export_pretrained(train_checkpoint: str | Path, out: str | Path, extra_log: dict | None = None) -> dict:
    """Write the shippable form of a training checkpoint: EMA weights only (a few MB), its settings
    and history; and a sidecar `<out>.json` with the sha256 and the training log."""
    state = load_checkpoint(train_checkpoint)
    small = {k: state[k] for k in ("format", "sde", "net", "history", "settings", "step", "epoch")}
    small["model"] = state["ema"] if state.get("ema") is not None else state["model"]
    small["ema"] = None
    out = Path(out)
    save_checkpoint(small, out)
    log = {"file": out.name, "sha256": sha256(out), "sde": state["sde"], "net": state["net"],
           "settings": state["settings"], "steps": state["step"], "history": state["history"]}
    log.update(extra_log or {})
    meta_path = out.with_suffix(".json")
    partial = meta_path.with_name(meta_path.name + ".partial")
    partial.write_text(json.dumps(log, indent=1) + "\n")
    partial.replace(meta_path)                          # the log whole, or the old one
    return log


def load_pretrained(name: str = "mnist-ve", map_location="cpu"):
    """The model shipped in `sdelib/checkpoints/<name>.pt` and its SDE, after checking its sha256;
    the model on `map_location` (e.g. `default_device()`), in eval mode."""
    path = CHECKPOINT_DIR / f"{name}.pt"
    meta_path = path.with_suffix(".json")
    command = SHIPPED[name][1] if name in SHIPPED else f"python -m sdelib.train --export {name} ..."
    retrain = f"Retrain it with `{command}` (see README), or reinstall sdelib."
    if not path.exists() or not meta_path.exists():
        available = sorted(p.stem for p in CHECKPOINT_DIR.glob("*.pt"))
        raise CheckpointError(f"no shipped checkpoint {name!r} (available: {available}). {retrain}")
    log = _sidecar(path, required=True, advice=retrain)
    state = load_checkpoint(path, map_location)
    _check_against_log(state, log, path)
    return _model_from_state(state, True, str(path))

"""Faults injected deterministically: Ctrl-C (SIGINT) inside a checkpoint write, SIGKILL inside a
write (in a child process), and two trainings on one output (the flock training lock)."""
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdelib import pretrained as pretrained_module
from sdelib.data import ring_mixture
from sdelib.nets import MLPScoreNet
from sdelib.pretrained import (CheckpointLockedError, load_checkpoint, model_from_checkpoint,
                               save_checkpoint)
from sdelib.sde import VESDE
from sdelib.train import train

REPO = Path(__file__).resolve().parents[1]
ORIGINAL_SAVE = torch.save


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Python's own Ctrl-C handler for every test, as in a terminal: a process started in the
    background by a shell without job control inherits SIGINT ignored, which would hide the
    behaviour under test."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def tiny_run(out, **kwargs):
    torch.manual_seed(0)
    sde = VESDE(10.0)
    model = MLPScoreNet(sde, hidden=16, depth=2)
    data = ring_mixture().sample(96, torch.Generator().manual_seed(0)).float()
    settings = dict(epochs=3, batch_size=16, lr=1e-3, warmup_steps=2, device="cpu",
                    progress=False, checkpoint=out)
    settings.update(kwargs)
    return train(model, sde, data, **settings)


def interrupting_save(calls_before_interrupt=0, signum=signal.SIGINT):
    """A torch.save that writes the first half of the real bytes, sends `signum` to this process,
    then writes the rest: on its call number `calls_before_interrupt` (0-based)."""
    calls = {"n": 0}

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        ORIGINAL_SAVE(obj, buffer, *args, **kwargs)
        raw = buffer.getvalue()
        if calls["n"] == calls_before_interrupt:
            f.write(raw[: len(raw) // 2])
            os.kill(os.getpid(), signum)
            f.write(raw[len(raw) // 2:])
        else:
            f.write(raw)
        calls["n"] += 1

    return save


def temporaries(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp"))


def small_state():
    net = MLPScoreNet(VESDE(10.0), hidden=8, depth=1)
    return pretrained_module.make_checkpoint(net, net.sde, history=[], step=3, epoch=0.5,
                                             settings={})


def test_sigint_inside_the_write_is_delivered_after_a_complete_save(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", interrupting_save())
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_state(), tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3       # the file is whole
    model_from_checkpoint(tmp_path / "c.pt")
    assert temporaries(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # restored


def test_sigint_while_the_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    original = pretrained_module.tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        made = original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)
        return made

    monkeypatch.setattr(pretrained_module.tempfile, "mkstemp", mkstemp)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(small_state(), tmp_path / "c.pt")
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 3
    assert temporaries(tmp_path) == []


def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    save_checkpoint(small_state(), tmp_path / "c.pt")
    before = (tmp_path / "c.pt").read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(small_state(), tmp_path / "c.pt")
    assert (tmp_path / "c.pt").read_bytes() == before and temporaries(tmp_path) == []


def test_ctrl_c_during_the_epoch_save_still_makes_the_final_save(tmp_path, monkeypatch):
    full = tiny_run(tmp_path / "full.pt")
    monkeypatch.setattr(torch, "save", interrupting_save(calls_before_interrupt=0))
    with pytest.raises(KeyboardInterrupt):
        tiny_run(tmp_path / "run.pt")                   # interrupted inside the end-of-epoch save
    state = load_checkpoint(tmp_path / "run.pt")
    assert state["step"] == 6 and len(state["history"]) == 1    # the epoch is kept
    assert temporaries(tmp_path) == []
    monkeypatch.setattr(torch, "save", ORIGINAL_SAVE)
    resumed = tiny_run(tmp_path / "run.pt")
    assert resumed["step"] == full["step"] == 18
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name])


CHILD = """
import io, os, signal, sys, torch
from sdelib.data import ring_mixture
from sdelib.nets import MLPScoreNet
from sdelib.sde import VESDE
from sdelib.train import train
original, calls = torch.save, {"n": 0}
def save(obj, f, *args, **kwargs):
    calls["n"] += 1
    buffer = io.BytesIO()
    original(obj, buffer, *args, **kwargs)
    raw = buffer.getvalue()
    f.write(raw[: len(raw) // 2])
    if calls["n"] == int(sys.argv[2]):
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)          # killed in the middle of the write
    f.write(raw[len(raw) // 2:])
torch.save = save
torch.manual_seed(0)
sde = VESDE(10.0)
data = ring_mixture().sample(96, torch.Generator().manual_seed(0)).float()
train(MLPScoreNet(sde, hidden=16, depth=2), sde, data, epochs=3, batch_size=16, lr=1e-3,
      warmup_steps=2, device="cpu", progress=False, checkpoint=sys.argv[1],
      checkpoint_every=1e-9)                          # a save after every step
"""


def run_child(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sigkill_inside_a_write_loses_at_most_one_interval_and_resume_cleans_up(tmp_path):
    out = tmp_path / "killed.pt"
    child = run_child(out, 9)                          # killed writing the 9th save (step 9)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(out)["step"] == 8           # the previous checkpoint is whole
    orphans = temporaries(tmp_path)
    assert len(orphans) == 1 and orphans[0].startswith("killed.pt")
    resumed = tiny_run(out)                            # the next start clears the orphan
    assert temporaries(tmp_path) == []
    full = tiny_run(tmp_path / "full.pt")
    assert resumed["step"] == full["step"] == 18
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name])


LOCK_HOLDER = """
import sys, time
from sdelib.pretrained import training_lock
with training_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_training_on_the_same_output_is_refused_until_the_first_dies(tmp_path):
    out = tmp_path / "shared.pt"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointLockedError,
                           match=rf"another training is writing .*shared\.pt: process "
                                 rf"{holder.pid} holds"):
            tiny_run(out, epochs=1)
        assert not out.exists()
    finally:
        holder.kill()                                  # SIGKILL: the OS drops its lock
        holder.wait()
    assert tiny_run(out, epochs=1)["step"] == 6
    assert load_checkpoint(out)["step"] == 6

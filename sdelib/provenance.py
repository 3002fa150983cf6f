"""Where every figure comes from: one provenance header and the one folder of measured results.

`sha256` fingerprints files (shipped models, downloads). Benchmarks and training runs write JSON that says what ran where: `provenance()` gives the machine,
device, torch version, command line and date, once for all of them. Results that the chapters
read (benchmark JSON, the pictures they show) live in `sdelib/results/`, inside the package, so a
chapter run from a plain install (as in Colab) finds them: the benchmarks write there
(`write_result`), the chapters read from there (`read_result`, `result_path`).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from .device import cpu_description

__all__ = ["sha256", "RESULTS_DIR", "RESULT_COMMANDS", "machine_description", "provenance", "result_path",
           "read_result", "write_result"]

RESULTS_DIR = Path(__file__).parent / "results"

# result file -> the benchmark command that writes it (named in the error when one is missing)
RESULT_COMMANDS = {
    "likelihood_speed.json": "python benchmarks/likelihood_speed.py",
    "likelihood_full.json": "python benchmarks/likelihood_speed.py --full-test-set",
    "likelihood_full_mnist-ve-is.json": "python benchmarks/likelihood_speed.py --full-test-set "
                                        "--model mnist-ve-is --tolerance 2e-3 --resume",
    "flow_matching.json": "python benchmarks/flow_matching.py",
    "samplers.json": "python benchmarks/samplers.py",
    "samplers.png": "python benchmarks/samplers.py",
    "sampler_selection.json": "python benchmarks/samplers.py --selection",
    "sampler_selection.png": "python benchmarks/samplers.py --selection",
    "train_speed_cpu.json": "python benchmarks/train_speed.py --seconds 150",
    "train_speed_cpu_compile.json": "python benchmarks/train_speed.py --seconds 150 --compile",
    "mnist-ve-em-samples.json": "python benchmarks/sample_grid.py",
    "mnist-ve-em-samples.png": "python benchmarks/sample_grid.py",
    "models.json": "python benchmarks/model_scores.py --model NAME",
    "guidance.json": "python benchmarks/guidance.py",
}


def sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def machine_description(device: torch.device | str = "cpu") -> str:
    """The GPU's name, or the CPU (model and bf16 instructions) and the number of torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_description()} CPU, {torch.get_num_threads()} threads"


def provenance(device: torch.device | str = "cpu", command: str | None = None, argv=None) -> dict:
    """Machine, device, torch version, command line and date of this run, for its JSON.

    `command` is how the program is started (default: `python <script>`); `argv` its arguments
    (default: sys.argv[1:])."""
    if command is None:
        command = "python " + os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    args = sys.argv[1:] if argv is None else list(argv)
    return {"machine": machine_description(device), "device": str(device), "torch": torch.__version__,
            "command": " ".join([command, *args]), "date": datetime.date.today().isoformat()}


def result_path(name: str) -> Path:
    """The path of a shipped result; a clear error naming the command that writes it if absent."""
    path = RESULTS_DIR / name
    if not path.exists():
        command = RESULT_COMMANDS.get(name, "the benchmark that writes it")
        raise FileNotFoundError(f"sdelib has no result {name!r} in {RESULTS_DIR}; it is written by "
                                f"`{command}` (run from a checkout of the repository)")
    return path


def read_result(name: str) -> dict:
    """A shipped JSON result (see `result_path`)."""
    return json.loads(result_path(name).read_text())


def write_result(data: dict, path: str | Path, indent: int | None = 1) -> Path:
    """Write JSON whole, then rename, so a run killed mid-write never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data, indent=indent) + "\n")
    partial.replace(path)
    return path

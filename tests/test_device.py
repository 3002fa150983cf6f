"""The one precision choice, tested on the CPU by patching what the hardware reports."""
import pytest
import torch

from sdelib import device as device_module
from sdelib.device import (autocast, cpu_description, cpu_has_avx512_bf16, default_device,
                           precision)


@pytest.mark.parametrize("capability,dtype,scaler", [
    ((9, 0), torch.bfloat16, False),   # H100 / H200
    ((8, 0), torch.bfloat16, False),   # A100
    ((7, 5), torch.float16, True),     # T4 (Colab): no bf16 units, though is_bf16_supported may say yes
    ((7, 0), torch.float16, True),     # V100
    ((6, 1), torch.float32, False),    # P100-class
])
def test_cuda_precision_follows_the_compute_capability(monkeypatch, capability, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # never consulted
    chosen = precision("cuda")
    assert (chosen.dtype, chosen.grad_scaler) == (dtype, scaler)
    assert f"{capability[0]}.{capability[1]}" in chosen.reason


def test_exact_computations_stay_float32_even_on_a_bf16_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert precision("cuda", exact=True).dtype == torch.float32


def test_cpu_uses_bf16_only_with_the_instructions_and_a_measured_gain(monkeypatch, tmp_path):
    flags = tmp_path / "cpuinfo"
    flags.write_text("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_has_avx512_bf16(flags) and not cpu_has_avx512_bf16(tmp_path / "missing")
    monkeypatch.setattr(device_module, "cpu_has_avx512_bf16", lambda: True)
    monkeypatch.setattr(device_module, "CPU_BF16_MEASURED_FASTER", False)
    assert precision("cpu").dtype == torch.float32
    monkeypatch.setattr(device_module, "CPU_BF16_MEASURED_FASTER", True)
    assert precision("cpu").dtype == torch.bfloat16
    monkeypatch.setattr(device_module, "cpu_has_avx512_bf16", lambda: False)
    assert precision("cpu").dtype == torch.float32


def test_the_cpu_description_names_the_model_and_its_bf16_instructions(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU 9000\n"
                       "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Some CPU 9000\n")
    assert cpu_description(cpuinfo) == "Some CPU 9000 (avx512_bf16, amx_bf16)"
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2\n")
    assert cpu_description(cpuinfo) == "Old CPU (no bf16 instructions)"
    assert cpu_description(tmp_path / "missing")  # falls back to the platform's name


def test_autocast_runs_a_matmul_in_the_chosen_dtype():
    x = torch.ones(4, 4)
    with autocast("cpu", precision("cpu", exact=True)):
        assert (x @ x).dtype == torch.float32
    with autocast("cpu", device_module.Precision(torch.bfloat16, False, "test")):
        assert (x @ x).dtype == torch.bfloat16


def test_default_device_is_the_gpu_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")


def test_a_loaded_model_lives_where_its_weights_were_loaded():
    """load_pretrained(..., map_location=DEVICE) gives a model on DEVICE (here the 'meta' device
    stands in for a GPU: no memory, but a device of its own), not a CPU model with GPU weights
    copied into it."""
    from sdelib.pretrained import (CHECKPOINT_DIR, load_checkpoint, load_pretrained,
                                   model_from_checkpoint)
    model, _ = load_pretrained("mnist-ve", map_location="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    state = load_checkpoint(CHECKPOINT_DIR / "mnist-ve.pt", "meta")
    assert {p.device.type for p in model_from_checkpoint(state)[0].parameters()} == {"meta"}
    assert {p.device.type for p in load_pretrained("mnist-ve")[0].parameters()} == {"cpu"}

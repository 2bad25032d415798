"""The CPU platform layer: megatron-core's CUDA idioms land on the CPU, and nothing else changes."""

from __future__ import annotations

import subprocess
import sys
import types

import torch

from tests.distributed import run_distributed


def _cpu_idioms(rank, world_size):
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, model_parallel_cuda_manual_seed

    from megatron_dwm.platform import get_platform, init_platform

    platform = init_platform()
    assert get_platform() is platform and platform.backend == "gloo" and platform.is_cpu
    facts = {
        "factory": torch.zeros(2, device="cuda").device.type,
        "index": torch.empty(1, device=torch.cuda.current_device()).device.type,
        "moved": torch.ones(1).cuda().device.type,
        "to": torch.ones(1).to("cuda").device.type,
        "type": torch.ones(1).type(),
        "plain_type": torch.ones(1, dtype=torch.int64).type(),
        # megatron-core's rotary embeddings under context parallelism, and its CPU offloading
        "pinned": torch.tensor([0, 3], device="cpu", pin_memory=True).cuda(non_blocking=True).tolist(),
        "pinned_copy": torch.ones(2).pin_memory().tolist(),
    }
    torch.cuda.synchronize()
    # The model-parallel RNG tracker forks the CPU generator: draws inside the fork come from the
    # tracker's own stream and leave the default stream where it was.
    torch.manual_seed(7)
    model_parallel_cuda_manual_seed(11, tp_rank=0, ep_rank=0, etp_rank=0)
    torch.manual_seed(7)
    expected_default = torch.rand(3)
    torch.manual_seed(7)
    with get_cuda_rng_tracker().fork():
        inside_first = torch.rand(3)
    after = torch.rand(3)
    with get_cuda_rng_tracker().fork():
        inside_second = torch.rand(3)
    facts.update(rng_default_unchanged=torch.equal(after, expected_default),
                 rng_tracker_advances=not torch.equal(inside_first, inside_second),
                 rng_tracker_differs=not torch.equal(inside_first, expected_default))
    return facts


def test_cuda_idioms_run_on_the_cpu():
    facts = run_distributed(_cpu_idioms, 1)[0]
    assert facts["factory"] == facts["index"] == facts["moved"] == facts["to"] == "cpu"
    assert facts["type"] == "torch.cuda.FloatTensor"  # what megatron-core's clipping asserts
    assert facts["plain_type"] == "torch.cuda.LongTensor"
    assert facts["pinned"] == [0, 3] and facts["pinned_copy"] == [1.0, 1.0]  # no CUDA driver asked for pinned memory
    assert facts["rng_default_unchanged"] and facts["rng_tracker_advances"] and facts["rng_tracker_differs"]


def test_cpu_mode_announces_itself_once_and_leaves_torch_alone_until_asked():
    code = (
        "import torch, megatron_dwm.platform as p\n"
        "before = torch.cuda.current_device\n"
        "p.init_platform(); p.init_platform()\n"
        "print('patched', torch.cuda.current_device is not before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("CPU mode on") == 1
    assert "patched True" in out
    code_import_only = "import torch; c = torch.cuda.current_device; import megatron_dwm.platform; print(torch.cuda.current_device is c)"
    out = subprocess.run([sys.executable, "-c", code_import_only], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"  # importing the module changes nothing


def _fake_gpu(monkeypatch, transformer_engine: bool) -> None:
    from megatron_dwm import platform

    monkeypatch.setattr(platform, "_PLATFORM", None)
    monkeypatch.setattr(platform, "_transformer_engine_installed", lambda: transformer_engine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("MEGATRON_DWM_FORCE_CPU", raising=False)
    monkeypatch.delenv("RANK", raising=False)


def test_gpu_without_transformer_engine_says_so_in_one_line(monkeypatch, capsys):
    from megatron_dwm.platform import init_platform

    _fake_gpu(monkeypatch, transformer_engine=False)
    assert init_platform().backend == "nccl"
    assert capsys.readouterr().out == (
        "megatron-dwm: Transformer Engine is not installed: the model uses megatron-core's local layer spec "
        "(slower; install transformer-engine for the fused layers)\n")
    _fake_gpu(monkeypatch, transformer_engine=True)
    init_platform()
    assert capsys.readouterr().out == ""


def test_transformer_engine_and_pinned_memory_only_on_a_cuda_platform(monkeypatch):
    from megatron_dwm import platform

    cpu = platform.Platform(torch.device("cpu"), "gloo")
    cuda = platform.Platform(torch.device("cuda", 0), "nccl")
    monkeypatch.setattr(platform, "_transformer_engine_importable", lambda: True)
    assert cuda.use_transformer_engine and cuda.pin_memory
    assert not cpu.use_transformer_engine and not cpu.pin_memory
    monkeypatch.setattr(platform, "_transformer_engine_importable", lambda: False)
    assert not cuda.use_transformer_engine


def test_forced_cpu_mode_builds_the_local_spec_on_a_gpu_machine_with_transformer_engine(monkeypatch):
    from megatron_dwm import platform
    from megatron_dwm.model.provider import llama_layer_spec, llama_transformer_config
    from megatron_dwm.model.presets import get_preset

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "transformer_engine", types.ModuleType("transformer_engine"))
    monkeypatch.setattr(platform, "_transformer_engine_importable", lambda: True)
    monkeypatch.setattr(platform, "_PLATFORM", platform.Platform(torch.device("cpu"), "gloo"))
    assert repr(llama_layer_spec()) == repr(llama_layer_spec(use_transformer_engine=False))  # partials: no ==
    assert not llama_transformer_config(get_preset("tiny"), use_cpu_initialization=True).gradient_accumulation_fusion

"""Kernel choice where triton is missing or not usable: the package still imports and the PyTorch
reference serves; asking for the fused kernel fails with a message saying why. Each case runs in
a fresh interpreter, since triton's mode is fixed when the kernels are first imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_dwm.ops import resolve_loss_kernel

REPO = Path(__file__).resolve().parents[2]

_USE_KERNELS = """
import torch
import megatron_dwm.ops as ops
logits = torch.randn(5, 2, 11)
labels = torch.randint(0, 11, (2, 5))
mask = torch.ones(2, 5)
print("cuda auto ->", ops.resolve_loss_kernel("auto", torch.device("cuda")))
print("cpu auto loss", ops.weighted_cross_entropy(logits.clone(), labels, mask).loss.item())
try:
    ops.per_sample_cross_entropy(logits, labels, mask, kernel="fused")
except RuntimeError as error:
    print("fused refused:", error)
"""


def _run(prelude: str, env: dict) -> str:
    result = subprocess.run(
        [sys.executable, "-c", prelude + _USE_KERNELS], env=env, cwd=REPO,
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _env(**updates: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **updates}


def test_without_triton_the_reference_serves():
    out = _run("import sys; sys.modules['triton'] = None\n", _env())
    assert "cuda auto -> torch" in out
    assert "cpu auto loss" in out
    assert "fused refused: loss kernel 'fused' needs triton" in out


def test_fused_on_cpu_needs_the_interpreter():
    out = _run("", _env())
    assert "cuda auto -> fused" in out
    assert "fused refused:" in out and "TRITON_INTERPRET=1" in out


def test_auto_picks_the_reference_on_cpu_and_the_fused_kernel_on_cuda():
    assert resolve_loss_kernel("auto", torch.device("cpu")) == "torch"
    assert resolve_loss_kernel("auto", torch.device("cuda")) == "fused"
    assert resolve_loss_kernel("torch", torch.device("cuda")) == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_benchmark_exits_with_a_message_without_gpu():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_loss_kernel.py"), "--micro-batch", "1"],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "needs a CUDA GPU" in result.stderr

"""Impossible configurations are refused with one clear message before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_dwm.arguments import ConfigError, build_parser, model_arch, validate_args

REPO = Path(__file__).resolve().parents[1]


def _validate(flags: list[str], world_size: int) -> None:
    validate_args(build_parser().parse_args(flags), world_size)


@pytest.mark.parametrize("flags,world_size,message", [
    (["--tensor-model-parallel-size", "3"], 3, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
    (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
     "world size 6 = 6 LLM ranks is not divisible by --tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2"),
    (["--tensor-model-parallel-size", "2", "--dwm-ranks", "1"], 4,
     "world size 4 minus --dwm-ranks 1 = 3 LLM ranks is not divisible"),
    (["--num-attention-heads", "8", "--num-query-groups", "3"], 1, "--num-attention-heads 8 is not divisible by --num-query-groups 3"),
    (["--micro-batch-size", "2", "--global-batch-size", "6"], 2,
     "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 2"),
    (["--use-distributed-optimizer"], 1, "--use-distributed-optimizer needs a GPU"),
])
def test_impossible_configuration_is_named(flags, world_size, message):
    with pytest.raises(ConfigError) as error:
        _validate(flags, world_size)
    assert message in str(error.value)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as error:
        _validate(["--tensor-model-parallel-size", "3", "--pipeline-model-parallel-size", "3"], 9)
    assert "--num-attention-heads" in str(error.value) and "--num-layers" in str(error.value)


def test_valid_configuration_fills_the_global_batch():
    args = build_parser().parse_args(["--tensor-model-parallel-size", "2", "--micro-batch-size", "3"])
    validate_args(args, world_size=8)
    assert args.global_batch_size == 3 * 4


def test_shape_flags_override_the_preset():
    args = build_parser().parse_args(["--model-preset", "llama2-7b", "--num-layers", "2"])
    arch = model_arch(args)
    assert (arch.num_layers, arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads) == (2, 4096, 11008, 32)


def _run_entry(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pretrain_dwm.py"), *flags], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "WORLD_SIZE": "1"}, timeout=120)


def test_entry_point_refuses_unknown_preset_before_any_work():
    result = _run_entry("--model-preset", "llama3-405b")
    assert result.returncode == 2
    assert "--model-preset: invalid choice: 'llama3-405b'" in result.stderr
    assert "CPU mode on" not in result.stdout  # no platform or process-group work happened


def test_entry_point_refuses_indivisible_heads_before_any_work():
    result = _run_entry("--tensor-model-parallel-size", "3")
    assert result.returncode == 2
    assert "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3" in result.stderr
    assert "CPU mode on" not in result.stdout

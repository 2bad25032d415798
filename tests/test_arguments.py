"""Impossible configurations are refused with one clear message before any work starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_dwm.arguments import ConfigError, build_parser, model_arch, validate_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_flags(corpus) -> list[str]:
    return ["--dwm-disable", "--data-path", *corpus["data_path"], "--tokenizer-type", "HuggingFaceTokenizer",
            "--tokenizer-model", str(corpus["tokenizer"])]


@pytest.fixture
def _validate(data_flags):
    def validate(flags: list[str], world_size: int) -> None:
        validate_args(build_parser().parse_args([*data_flags, *flags]), world_size)

    return validate


@pytest.mark.parametrize("flags,world_size,message", [
    (["--tensor-model-parallel-size", "3"], 3, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
    (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3"),
    (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
     "world size 6 = 6 LLM ranks is not divisible by --tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2"),
    (["--tensor-model-parallel-size", "2", "--dwm-ranks", "1"], 4,
     "world size 4 minus --dwm-ranks 1 = 3 LLM ranks is not divisible"),
    (["--dwm-ranks", "2", "--global-batch-size", "6"], 5, "--dwm-ranks 2 does not divide the data-parallel size 3"),
    (["--dwm-ranks", "1"], 2, "--dwm-ranks 1 reserves ranks for the DWM, which --dwm-disable turns off"),
    (["--num-attention-heads", "8", "--num-query-groups", "3"], 1, "--num-attention-heads 8 is not divisible by --num-query-groups 3"),
    (["--micro-batch-size", "2", "--global-batch-size", "6"], 2,
     "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 2"),
    (["--use-distributed-optimizer"], 1, "--use-distributed-optimizer needs a GPU"),
    (["--dwm-valid-data-path", "/nonexistent/lambada"], 1, "--dwm-valid-data-path: no /nonexistent/lambada.bin/.idx"),
])
def test_impossible_configuration_is_named(flags, world_size, message, _validate):
    with pytest.raises(ConfigError) as error:
        _validate(flags, world_size)
    assert message in str(error.value)


def test_all_problems_are_reported_together(_validate):
    with pytest.raises(ConfigError) as error:
        _validate(["--tensor-model-parallel-size", "3", "--pipeline-model-parallel-size", "3"], 9)
    assert "--num-attention-heads" in str(error.value) and "--num-layers" in str(error.value)


def test_valid_configuration_fills_the_global_batch(data_flags):
    args = build_parser().parse_args([*data_flags, "--tensor-model-parallel-size", "2", "--micro-batch-size", "3"])
    validate_args(args, world_size=8)
    assert args.global_batch_size == 3 * 4


@pytest.mark.parametrize("micro,global_batch,world_size,expected", [
    (2, 16, 1, 4),  # a quarter of the global batch
    (2, 32, 2, 8),
    (2, 40, 2, 8),  # 10, rounded down to a multiple of micro batch x DP = 4
    (4, 24, 2, 8),  # 6 is less than micro batch x DP = 8: one micro batch per replica
])
def test_default_validation_batch_is_a_quarter_of_the_global_batch(corpus, data_flags, micro, global_batch,
                                                                 world_size, expected):
    dwm_flags = [flag for flag in data_flags if flag != "--dwm-disable"] + ["--dwm-valid-data-path", str(corpus["valid"])]
    args = build_parser().parse_args([*dwm_flags, "--micro-batch-size", str(micro),
                                      "--global-batch-size", str(global_batch)])
    validate_args(args, world_size=world_size)
    assert args.dwm_valid_batch_size == expected


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


# The bad configurations a user meets most, through the entry point: each fails with its message
# before any process group exists, and creates nothing.
def _main_fails(argv: list[str], capsys) -> str:
    import torch.distributed as dist

    import pretrain_dwm

    with pytest.raises(SystemExit) as exit_info:
        pretrain_dwm.main(argv)
    assert exit_info.value.code == 2
    assert not dist.is_initialized()
    return capsys.readouterr().err


def test_global_batch_not_divisible_by_micro_batch_times_dp(data_flags, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    err = _main_fails([*data_flags, "--micro-batch-size", "2", "--global-batch-size", "12"], capsys)
    assert "--global-batch-size 12 is not divisible by --micro-batch-size 2 x data-parallel size 4" in err


def test_missing_data_is_named(data_flags, capsys, tmp_path):
    err = _main_fails(data_flags[data_flags.index("--tokenizer-type"):], capsys)
    assert "give the training data with exactly one of --data-path and --per-split-data-args-path" in err
    err = _main_fails([*data_flags, "--data-path", "1", str(tmp_path / "nowhere")], capsys)
    assert f"--data-path: no {tmp_path / 'nowhere'}.bin/.idx" in err


def test_missing_tokenizer_is_named(data_flags, capsys, tmp_path):
    err = _main_fails(data_flags[:-2], capsys)
    assert "--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model" in err
    err = _main_fails([*data_flags, "--tokenizer-model", str(tmp_path / "tok.json")], capsys)
    assert f"--tokenizer-model {tmp_path / 'tok.json'}: no such file" in err


def test_unwritable_save_dir_is_named(data_flags, capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    err = _main_fails([*data_flags, "--save", str(blocker / "ckpt"), "--tensorboard-dir", str(blocker / "tb")],
                      capsys)
    assert f"--save {blocker / 'ckpt'}: cannot create or write this directory" in err
    assert f"--tensorboard-dir {blocker / 'tb'}: cannot create or write this directory" in err


def test_missing_lambada_style_set_and_orphan_save_interval(data_flags, capsys, tmp_path):
    err = _main_fails([*data_flags, "--dwm-valid-data-path", str(tmp_path / "lambada"), "--save-interval", "5"],
                      capsys)
    assert f"--dwm-valid-data-path: no {tmp_path / 'lambada'}.bin/.idx" in err
    assert "--save-interval needs --save" in err


def test_dwm_flags_are_checked(data_flags, corpus):
    flags = [flag for flag in data_flags if flag != "--dwm-disable"]
    args = build_parser().parse_args([*flags, "--micro-batch-size", "2", "--global-batch-size", "8",
                                      "--dwm-valid-batch-size", "3", "--dwm-stages", "20", "--train-iters", "10"])
    with pytest.raises(ConfigError) as error:
        validate_args(args, world_size=2)
    assert "--dwm-stages 20 must lie in [1, --train-iters 10]" in str(error.value)
    assert "updating the DWM needs its validation set: give --dwm-valid-data-path" in str(error.value)
    args = build_parser().parse_args([*flags, "--micro-batch-size", "2", "--global-batch-size", "8",
                                      "--dwm-valid-batch-size", "3", "--dwm-valid-data-path", str(corpus["valid"])])
    with pytest.raises(ConfigError) as error:
        validate_args(args, world_size=2)
    assert "--dwm-valid-batch-size 3 is not a positive multiple of --micro-batch-size 2 x data-parallel size 2" \
        in str(error.value)

"""Impossible configurations are refused with one clear message before any work starts."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_dwm.arguments import NUMERIC_RANGES, ConfigError, build_parser, model_arch, parse_args
from megatron_dwm.config_checks import validate_args
from tests.argument_fixtures import data_flags, single_process  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]


PP2 = ["--pipeline-model-parallel-size", "2"]


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
    (["--dwm-ranks", "1"], 2, "--dwm-ranks 1 reserves ranks for the DWM, which --weighting uniform does not use"),
    (["--num-attention-heads", "8", "--num-query-groups", "3"], 1, "--num-attention-heads 8 is not divisible by --num-query-groups 3"),
    (["--micro-batch-size", "2", "--global-batch-size", "6"], 2,
     "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 2"),
    (["--dwm-valid-data-path", "/nonexistent/lambada"], 1, "--dwm-valid-data-path: no /nonexistent/lambada.bin/.idx"),
    ([*PP2, "--num-layers-per-virtual-pipeline-stage", "1", "--num-virtual-stages-per-pipeline-rank", "2"], 2,
     "--num-layers-per-virtual-pipeline-stage 1 and --num-virtual-stages-per-pipeline-rank 2 both set the virtual "
     "pipeline: keep one of them"),
    ([*PP2, "--num-layers-per-virtual-pipeline-stage", "3"], 2,
     "--num-layers-per-virtual-pipeline-stage 3: the 2 layers of each pipeline stage (--num-layers 4 / "
     "--pipeline-model-parallel-size 2) are not a multiple of it"),
    ([*PP2, "--num-virtual-stages-per-pipeline-rank", "3"], 2,
     "--num-virtual-stages-per-pipeline-rank 3: the 2 layers of each pipeline stage (--num-layers 4 / "
     "--pipeline-model-parallel-size 2) do not split into 3 equal model chunks"),
    (["--num-virtual-stages-per-pipeline-rank", "2"], 1,
     "--num-virtual-stages-per-pipeline-rank 2: the interleaved pipeline schedule needs "
     "--pipeline-model-parallel-size > 1"),
    ([*PP2, "--num-virtual-stages-per-pipeline-rank", "2", "--micro-batch-size", "2", "--global-batch-size", "6"], 2,
     "--global-batch-size 6 makes 3 micro batches per data-parallel replica (--micro-batch-size 2 x data-parallel size "
     "1); the interleaved pipeline schedule needs a multiple of --pipeline-model-parallel-size 2"),
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


@pytest.mark.parametrize("flags,chunks", [
    ([*PP2, "--num-layers", "8", "--num-layers-per-virtual-pipeline-stage", "1"], 4),  # 8 layers / PP 2 / 1
    ([*PP2, "--num-layers", "8", "--num-layers-per-virtual-pipeline-stage", "2"], 2),
    ([*PP2, "--num-virtual-stages-per-pipeline-rank", "2"], 2),
    ([*PP2, "--num-layers-per-virtual-pipeline-stage", "2"], None),  # one chunk per rank: the plain schedule
    (["--num-virtual-stages-per-pipeline-rank", "1"], None),
    ([], None),
])
def test_virtual_pipeline_size_is_derived_as_megatron_lm(data_flags, flags, chunks):
    args = build_parser().parse_args([*data_flags, "--global-batch-size", "8", *flags])
    validate_args(args, world_size=2 if PP2[0] in flags else 1)
    assert args.virtual_pipeline_model_parallel_size == chunks


def test_interleaved_schedule_rounds_the_default_validation_batch_to_pp_micro_batches(corpus, data_flags):
    dwm_flags = [flag for flag in data_flags if flag != "--dwm-disable"]
    batch = [*dwm_flags, "--dwm-valid-data-path", str(corpus["valid"]), *PP2, "--micro-batch-size", "2",
             "--global-batch-size", "8"]
    sizes = []
    for flags in ([], ["--num-virtual-stages-per-pipeline-rank", "2"]):
        args = build_parser().parse_args([*batch, *flags])
        validate_args(args, world_size=2)
        sizes.append(args.dwm_valid_batch_size)
    assert sizes == [2, 4]  # a quarter of the batch is 1 micro batch; the interleaved schedule takes PP of them


# -- context parallelism ---------------------------------------------------------------------------
CP2 = ["--context-parallel-size", "2"]


def _platform(monkeypatch, gpu: bool, transformer_engine: bool) -> None:
    monkeypatch.setattr("megatron_dwm.platform._gpu_in_use", lambda force_cpu=None: gpu)
    monkeypatch.setattr("megatron_dwm.platform._transformer_engine_importable", lambda: transformer_engine)


@pytest.mark.parametrize("gpu,reason", [(False, "no GPU is in use"), (True, "Transformer Engine is not available")])
def test_context_parallelism_needs_transformer_engine_attention(gpu, reason, _validate, monkeypatch):
    _platform(monkeypatch, gpu, transformer_engine=False)
    with pytest.raises(ConfigError) as error:
        _validate(CP2, 2)
    assert _problems(str(error.value)) == [
        f"--context-parallel-size 2 needs Transformer Engine's attention on a GPU ({reason}): megatron-core's "
        "context-parallel attention is TEDotProductAttention, its local attention takes --context-parallel-size 1 only"]


def test_context_parallel_ranks_share_a_replica(data_flags, monkeypatch):
    """TP 2 x CP 2 x PP 2 on 16 ranks: DP 2, so the default global batch is micro batch x 2."""
    _platform(monkeypatch, gpu=True, transformer_engine=True)
    args = parse_args([*data_flags, *CP2, "--tensor-model-parallel-size", "2", *PP2, "--micro-batch-size", "3"],
                      world_size=16)
    assert (args.context_parallel_size, args.global_batch_size) == (2, 6)


@pytest.mark.parametrize("flags,world_size,message", [
    ([*CP2, "--tensor-model-parallel-size", "2"], 6,
     "world size 6 = 6 LLM ranks is not divisible by --tensor-model-parallel-size 2 x --context-parallel-size 2 x "
     "--pipeline-model-parallel-size 1 = 4"),
    ([*CP2, "--seq-length", "250"], 2,
     "--context-parallel-size 2 splits each sequence into 2 x 2 = 4 equal chunks (megatron-core's load-balanced "
     "split): --seq-length 250 is not divisible by 4"),
    ([*CP2, "--tensor-model-parallel-size", "4", "--num-attention-heads", "8", "--num-query-groups", "4",
      "--sequence-parallel", "--seq-length", "68"], 8,
     "--sequence-parallel splits the sequence over tensor-parallel ranks: --seq-length 68 is not divisible by "
     "--tensor-model-parallel-size 4 x --context-parallel-size 2"),
    ([*CP2, "--reset-attention-mask"], 2, "--reset-attention-mask builds explicit attention masks, which the "
     "context-parallel attention (causal only) does not take: not with --context-parallel-size 2"),
    ([*CP2, "--loss-kernel", "fused"], 2, "--loss-kernel fused reduces each sample's tokens on one rank: not with "
     "--context-parallel-size 2 (use --loss-kernel torch or auto)"),
    ([*CP2, "--dwm-ranks", "1"], 3, "--dwm-ranks 1 with --context-parallel-size 2: not supported yet"),
    ([*CP2, "--calculate-per-token-loss"], 2, "--calculate-per-token-loss counts each sample's loss tokens on one "
     "rank: not with --context-parallel-size 2 yet"),
    (["--context-parallel-size", "0"], 1, "--context-parallel-size 0 must be >= 1"),
])
def test_impossible_context_parallel_configuration_is_named(flags, world_size, message, _validate, monkeypatch):
    _platform(monkeypatch, gpu=True, transformer_engine=True)  # the checks of a GPU with Transformer Engine
    with pytest.raises(ConfigError) as error:
        _validate(flags, world_size)
    assert message in str(error.value)


def test_shape_flags_override_the_preset():
    args = build_parser().parse_args(["--model-preset", "llama2-7b", "--num-layers", "2"])
    arch = model_arch(args)
    assert (arch.num_layers, arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads) == (2, 4096, 11008, 32)


def test_entry_point_refuses_unknown_preset_before_any_work(data_flags, capsys):
    error = _main_fails([*data_flags, "--model-preset", "llama3-405b"], capsys)
    assert "--model-preset: invalid choice: 'llama3-405b'" in error


def test_entry_point_refuses_indivisible_heads_before_any_work(data_flags, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    error = _main_fails([*data_flags, "--tensor-model-parallel-size", "3"], capsys)
    assert "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3" in error


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
    assert "--dwm-stages 20 exceeds --train-iters 10" in str(error.value)
    assert "updating the DWM needs its validation set: give --dwm-valid-data-path" in str(error.value)
    args = build_parser().parse_args([*flags, "--micro-batch-size", "2", "--global-batch-size", "8",
                                      "--dwm-valid-batch-size", "3", "--dwm-valid-data-path", str(corpus["valid"])])
    with pytest.raises(ConfigError) as error:
        validate_args(args, world_size=2)
    assert "--dwm-valid-batch-size 3 is not a positive multiple of --micro-batch-size 2 x data-parallel size 2" \
        in str(error.value)
    args = build_parser().parse_args([*flags, *PP2, "--num-virtual-stages-per-pipeline-rank", "2", "--micro-batch-size",
                                      "2", "--global-batch-size", "8", "--dwm-valid-batch-size", "2",
                                      "--dwm-valid-data-path", str(corpus["valid"])])
    with pytest.raises(ConfigError) as error:
        validate_args(args, world_size=2)
    assert "--dwm-valid-batch-size 2 makes 1 micro batch per data-parallel replica" in str(error.value)


# Every numeric flag of the parser, and the flags for which 0 is a legitimate value; for the
# others 0 is refused, and for all of them a negative value (and NaN and infinity, for floats).
NUMERIC_FLAGS = [action for action in build_parser()._actions if action.type in (int, float)]
ZERO_IS_VALID = {
    "--seed", "--dwm-ranks", "--min-lr", "--lr-warmup-iters", "--lr-warmup-samples", "--lr-warmup-init",
    "--weight-decay",
    "--clip-grad",  # 0: no clipping
    "--adam-beta1", "--adam-beta2", "--dwm-lr", "--dwm-update-iters", "--dwm-weight-clip",  # as MIN
    "--num-workers", "--eval-iters", "--logging-level", "--ckpt-step",
    "--domain-weights",  # 0 drops a dataset from the loss
    "--loss-weighting-warmup-iters",
    "--lr-warmup-fraction",  # 0: no warm-up
}
VALID_ZERO_ARGV = {"--dwm-weight-clip": ["--dwm-weight-clip", "0", "2"]}


def _valid_zero_argv(flag: str, valid_flags: list[str]) -> list[str]:
    """`flag` at 0 in a configuration where that is valid (a domain weight of 0 beside weights 1)."""
    if flag == "--domain-weights":
        data_path = valid_flags[valid_flags.index("--data-path") + 1:valid_flags.index("--tokenizer-type")]
        return ["--domain-weights", "0", *["1"] * (len(data_path) // 2 - 1)]
    return VALID_ZERO_ARGV.get(flag, [flag, "0"])


def _invalid_values(action) -> list[str]:
    values = ([] if action.option_strings[0] in ZERO_IS_VALID else ["0"]) + ["-1"]
    infinity_ok = NUMERIC_RANGES[action.dest].infinity_ok if action.dest in NUMERIC_RANGES else False
    return values + (["nan", *([] if infinity_ok else ["inf"])] if action.type is float else [])


INVALID_CASES = [(action.option_strings[0], value, action.nargs if isinstance(action.nargs, int) else 1)
                 for action in NUMERIC_FLAGS for value in _invalid_values(action)]


@pytest.fixture(scope="module")
def valid_flags(corpus, tmp_path_factory) -> list[str]:
    """A configuration that passes every check, with the DWM on (its checks run) and a checkpoint
    directory (checks that need --save / --load run)."""
    checkpoints = str(tmp_path_factory.mktemp("arguments") / "ckpt")
    return ["--data-path", *corpus["data_path"], "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
            str(corpus["tokenizer"]), "--dwm-valid-data-path", str(corpus["valid"]), "--save", checkpoints,
            "--load", checkpoints]


def test_valid_flags_are_valid(valid_flags):
    args = parse_args(valid_flags, world_size=1)
    # the DWM's checks ran: its phase filled in as the whole (single) stage of --train-iters 10
    assert args.dwm_update_iters == 10 and args.dwm_valid_batch_size == 1


def test_every_numeric_flag_has_a_declared_range():
    missing = [action.option_strings[0] for action in NUMERIC_FLAGS if action.dest not in NUMERIC_RANGES]
    assert missing == [], "numeric flags without a range in megatron_dwm.arguments.NUMERIC_RANGES"
    assert len(NUMERIC_FLAGS) > 40  # the enumeration found the parser's flags


def _problems(message: str) -> list[str]:
    return [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]


@pytest.mark.parametrize("flag,value,nargs", INVALID_CASES, ids=[f"{f}={v}" for f, v, _ in INVALID_CASES])
def test_invalid_number_is_an_argument_error_naming_the_flag(flag, value, nargs, valid_flags, capsys, monkeypatch):
    argv = [*valid_flags, flag, *[value] * nargs]
    with pytest.raises(ConfigError):
        parse_args(argv, world_size=1)  # refused, so the entry point below stops before any work
    monkeypatch.setenv("WORLD_SIZE", "1")
    err = _main_fails(argv, capsys)
    problems = _problems(err)
    assert len(problems) == 1, err  # reported once, by its range: no later check trips over it
    assert problems[0].startswith(f"{flag} ") and " must be " in problems[0], err
    shown = float(problems[0].split()[1])  # the value, as given
    assert shown == float(value) or (math.isnan(shown) and value == "nan"), err


@pytest.mark.parametrize("flag", sorted(ZERO_IS_VALID))
def test_zero_is_accepted_where_it_means_something(flag, valid_flags):
    parse_args([*valid_flags, *_valid_zero_argv(flag, valid_flags)], world_size=1)


@pytest.mark.parametrize("flags,message", [
    (["--micro-batch-size", "0"], "--micro-batch-size 0 must be >= 1"),
    (["--global-batch-size", "0"], "--global-batch-size 0 must be >= 1"),
    (["--lr", "-1"], "--lr -1.0 must be > 0"),
    (["--dwm-temperature", "0"], "--dwm-temperature 0.0 must be > 0"),
    (["--dwm-fd-radius", "nan"], "--dwm-fd-radius nan must be a finite number > 0"),
    (["--dwm-weight-clip", "0", "nan"], "--dwm-weight-clip 0.0 nan must be a finite number >= 0 (or inf)"),
    (["--dwm-weight-clip", "inf", "inf"], "--dwm-weight-clip inf inf: need MIN < 1 < MAX (weights have mean 1)"),
    (["--adam-beta2", "1"], "--adam-beta2 1.0 must be in [0, 1)"),
    (["--seed", "-1"], "--seed -1 must be in [0, 2147483647]"),
])
def test_invalid_number_message(flags, message, valid_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*valid_flags, *flags], world_size=1)
    assert _problems(str(error.value)) == [message]


def test_range_problems_come_first_and_the_rest_still_follow(valid_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*valid_flags, "--tensor-model-parallel-size", "3", "--micro-batch-size", "0", "--min-lr", "1",
                    "--dwm-hidden-size", "130"], world_size=3)
    assert _problems(str(error.value)) == [
        "--micro-batch-size 0 must be >= 1",
        "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3",
        "--num-query-groups 2 is not divisible by --tensor-model-parallel-size 3",
        "--min-lr 1.0 exceeds --lr 0.0003",
        "--dwm-hidden-size 130 is not divisible by --dwm-num-attention-heads 4",
    ]


def test_syntax_error_is_one_line_without_the_usage_block(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    err = _main_fails(["--micro-batch-size", "two"], capsys)
    assert err == "pretrain_dwm.py: error: argument --micro-batch-size: invalid int value: 'two'\n"


def test_help_states_the_defaults():
    text = build_parser().format_help()
    assert "samples per micro-batch per DP rank (default: 1)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


# Under a launcher every rank finds the same error: rank 0 reports it, the others wait for the
# launcher to end them, and report it themselves only if it does not.
def test_argument_error_goes_to_torchrun_error_file(tmp_path, capsys, monkeypatch):
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert _main_fails(["--micro-batch-size", "0"], capsys) == ""
    message = json.loads(error_file.read_text())["message"]
    assert "--micro-batch-size 0 must be >= 1" in message["message"]
    assert message["extraInfo"]["py_callstack"] == message["message"]  # what torchrun's summary prints


@pytest.mark.parametrize("launcher,waits", [("TORCHELASTIC_RUN_ID", True), ("SLURM_PROCID", True), (None, False)])
def test_other_ranks_report_only_after_the_grace_period(launcher, waits, capsys, monkeypatch):
    import pretrain_dwm

    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    if launcher:
        monkeypatch.setenv(launcher, "1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = _main_fails(["--micro-batch-size", "0"], capsys)
    assert slept == ([pretrain_dwm.ARGUMENT_ERROR_GRACE_S] if waits else [])
    assert err.startswith("pretrain_dwm.py: error: ") and err.rstrip().endswith("(rank 1)")


def test_torchrun_job_shows_the_argument_error_once(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(REPO / "pretrain_dwm.py"),
                             "--micro-batch-size", "0"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert output.count("--micro-batch-size 0 must be >= 1") == 1, output
    assert "usage:" not in output
    root_cause = output[output.index("Root Cause"):]  # torchrun's summary, its last lines
    assert "exitcode  : 2" in root_cause and "--micro-batch-size 0 must be >= 1" in root_cause, output


def test_tokenizer_types_are_the_tokenizer_modules():
    from megatron_dwm.arguments import TOKENIZER_TYPES
    from megatron_dwm.data.tokenizer import TOKENIZER_TYPES as BUILT

    assert TOKENIZER_TYPES == BUILT


def test_a_damaged_tokenizer_is_an_argument_error(data_flags, tmp_path):
    damaged = tmp_path / "tokenizer.json"
    damaged.write_text("{not json")
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, "--tokenizer-model", str(damaged)], world_size=1)
    [problem] = _problems(str(error.value))
    assert problem.startswith(f"--tokenizer-model {damaged}: cannot be loaded as --tokenizer-type "
                              "HuggingFaceTokenizer ("), problem


# --load: a path that does not exist is a mistake, unless it is --save (a self-resuming job's first
# start); an existing directory with no checkpoint is a fresh start (the trainer says so).
def test_a_mistyped_load_is_refused_naming_the_path(data_flags, tmp_path):
    missing = tmp_path / "chekpoints"
    for save in ([], ["--save", str(tmp_path / "checkpoints")]):
        with pytest.raises(ConfigError) as error:
            parse_args([*data_flags, "--load", str(missing), *save], world_size=1)
        assert _problems(str(error.value)) == [
            f"--load {missing}: no such directory (to start from scratch, leave out --load; a job that resumes "
            "itself gives --load and --save the same directory, which may not exist yet)"]


def test_load_may_be_missing_when_it_is_save_or_empty(data_flags, tmp_path):
    parse_args([*data_flags, "--load", str(tmp_path / "ckpt"), "--save", str(tmp_path / "ckpt") + "/"], world_size=1)
    parse_args([*data_flags, "--load", str(tmp_path)], world_size=1)


def test_load_must_be_a_directory(data_flags, tmp_path):
    file = tmp_path / "ckpt"
    file.write_text("")
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, "--load", str(file)], world_size=1)
    assert _problems(str(error.value)) == [f"--load {file}: not a directory"]


@pytest.mark.parametrize("clip, bounds", [(None, (0.0, 2.0)), (["0", "inf"], None), (["0.5", "inf"], (0.5, 16.0)),
                                          (["0.1", "1.5"], (0.1, 1.5))])
def test_weight_clip_flag_becomes_the_dwm_bounds(valid_flags, clip, bounds):
    """--dwm-weight-clip: the default 0 2; "0 inf" means no clip; an infinite MAX is the global batch
    size (no weight of mean-1 weights exceeds it, and the DWM's clip needs finite bounds)."""
    from megatron_dwm.training.weighting import weight_clip_bounds

    flags = [*valid_flags, "--micro-batch-size", "2", "--global-batch-size", "16"]
    args = parse_args([*flags, *(["--dwm-weight-clip", *clip] if clip else [])], world_size=1)
    assert weight_clip_bounds(args) == bounds

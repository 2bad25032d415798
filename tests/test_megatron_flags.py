"""Megatron-LM's own pretraining command lines parse here: each flag is supported (same meaning),
ignored (accepted, reported once at start-up) or refused (named in the argument error)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from megatron_dwm import megatron_flags
from megatron_dwm.arguments import ConfigError, build_parser, model_arch, parse_args
from megatron_dwm.model.presets import PRESETS
from megatron_dwm.training.build import ddp_options, transformer_options
from tests.argument_fixtures import data_flags, single_process  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]

# NVIDIA/Megatron-LM examples/llama/train_llama3_8b_h100_fp8.sh, its real-data variant, flag for flag
# in the order it passes them; sizes shrunk to the tiny preset's (the script's in comments), paths
# ($NAME) replaced by the test's files. 8 GPUs, as there.
LLAMA3_8B_FP8 = [
    # MODEL_ARGS
    "--use-mcore-models", "--num-layers", "4",  # 32
    "--hidden-size", "64",  # 4096
    "--ffn-hidden-size", "176",  # 14336
    "--num-attention-heads", "4",  # 32
    "--group-query-attention", "--num-query-groups", "2",  # 8
    "--kv-channels", "16",  # 128
    "--seq-length", "256",  # 8192
    "--max-position-embeddings", "512",  # 8192
    "--position-embedding-type", "rope", "--rotary-base", "1000000", "--rotary-percent", "1.0",
    "--attention-dropout", "0.0", "--hidden-dropout", "0.0", "--swiglu", "--normalization", "RMSNorm",
    "--init-method-std", "0.0134", "--attention-backend", "fused", "--apply-layernorm-1p",
    "--untie-embeddings-and-output-weights", "--disable-bias-linear",
    # TRAINING_ARGS, DDP_ARGS appended
    "--micro-batch-size", "1", "--global-batch-size", "128", "--train-samples", "1953125000",
    "--lr-decay-samples", "1949218748", "--lr-warmup-samples", "3906252", "--lr", "0.00015", "--min-lr", "0.00001",
    "--decoupled-lr", "5.0e-4", "--decoupled-min-lr", "4.5e-5", "--lr-decay-style", "cosine", "--clip-grad", "1.0",
    "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--bf16", "--grad-reduce-in-bf16",
    "--cross-entropy-loss-fusion", "--calculate-per-token-loss", "--manual-gc", "--empty-unused-memory-level", "1",
    "--exit-duration-in-mins", "235", "--use-distributed-optimizer", "--overlap-grad-reduce", "--overlap-param-gather",
    # DTYPE_ARGS
    "--fp8-format", "hybrid", "--fp8-amax-history-len", "1024", "--fp8-amax-compute-algo", "max", "--fp8-param-gather",
    # MODEL_PARALLEL_ARGS
    "--tensor-model-parallel-size", "1", "--context-parallel-size", "1", "--sequence-parallel",
    # DATA_ARGS_LIST
    "--data-path", "$DATA_ARG", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "$TOKENIZER_ARG",
    "--data-cache-path", "$DATA_CACHE_PATH", "--split", "99,1,0", "--no-create-attention-mask-in-dataloader",
    "--no-mmap-bin-files", "--num-workers", "1", "--vocab-size", "256",  # 128256
    # EVAL_AND_LOGGING_ARGS
    "--log-interval", "1", "--eval-iters", "32", "--eval-interval", "100", "--save-interval", "1000",
    "--log-throughput", "--profile", "--profile-step-start", "4", "--profile-step-end", "6",
    "--ckpt-format", "torch_dist", "--distributed-timeout-minutes", "60", "--save", "$CHECKPOINT_PATH",
    "--load", "$CHECKPOINT_PATH", "--tensorboard-dir", "$TENSORBOARD_LOGS_PATH",
]
LLAMA3_REFUSED = {
    "--apply-layernorm-1p", "--decoupled-lr", "--decoupled-min-lr", "--fp8-format", "--fp8-amax-history-len",
    "--fp8-amax-compute-algo", "--fp8-param-gather",
}

# NVIDIA/Megatron-LM examples/gpt3/train_gpt3_175b_distributed.sh, likewise; TP x PP shrunk from 8 x 16.
GPT3_175B = [
    # GPT_MODEL_ARGS
    "--num-layers", "4",  # 96
    "--hidden-size", "64",  # 12288
    "--num-attention-heads", "4",  # 96
    "--seq-length", "256",  # 2048
    "--max-position-embeddings", "512",  # 2048
    "--attention-backend", "auto",
    # TRAINING_ARGS
    "--micro-batch-size", "1", "--global-batch-size", "16",  # 1536
    "--step-batch-size-schedule", "0:16 2.4B:320 4.8B:624 7.2B:928 9.6B:1232 12B:1536",
    "--train-iters", "100",  # 500000
    "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95", "--init-method-std", "0.006",
    "--clip-grad", "1.0", "--fp16", "--lr", "6.0e-5", "--lr-decay-style", "cosine", "--min-lr", "6.0e-6",
    "--lr-warmup-fraction", ".001", "--lr-decay-iters", "86",  # 430000
    # MODEL_PARALLEL_ARGS
    "--tensor-model-parallel-size", "2",  # 8
    "--pipeline-model-parallel-size", "2",  # 16
    # DATA_ARGS
    "--data-path", "$DATA_PATH", "--vocab-file", "$VOCAB_FILE", "--merge-file", "$MERGE_FILE", "--split", "949,50,1",
    # EVAL_AND_LOGGING_ARGS
    "--log-interval", "100", "--save-interval", "10000", "--eval-interval", "1000", "--save", "$CHECKPOINT_PATH",
    "--load", "$CHECKPOINT_PATH", "--eval-iters", "10", "--tensorboard-dir", "$TENSORBOARD_LOGS_PATH",
]
GPT3_REFUSED = {"--step-batch-size-schedule", "--vocab-file", "--merge-file"}

# The classification, in full: a change to megatron_dwm.megatron_flags must be made here too.
SUPPORTED = (
    "--accumulate-allreduce-grads-in-fp32", "--adam-beta1", "--adam-beta2", "--adam-eps", "--attention-dropout",
    "--bf16", "--calculate-per-token-loss", "--ckpt-format", "--ckpt-step", "--clip-grad", "--context-parallel-size",
    "--data-cache-path", "--data-path", "--ddp-bucket-size", "--disable-bias-linear", "--distributed-timeout-minutes",
    "--eod-mask-loss", "--eval-interval", "--eval-iters", "--exit-duration-in-mins", "--exit-interval",
    "--exit-signal-handler", "--ffn-hidden-size", "--finetune", "--fp16", "--global-batch-size",
    "--grad-reduce-in-bf16", "--group-query-attention", "--hidden-dropout", "--hidden-size", "--hysteresis",
    "--init-method-std", "--initial-loss-scale", "--kv-channels", "--load", "--log-interval", "--log-throughput",
    "--logging-level", "--loss-scale", "--loss-scale-window", "--lr", "--lr-decay-iters", "--lr-decay-samples",
    "--lr-decay-style", "--lr-warmup-fraction", "--lr-warmup-init", "--lr-warmup-iters", "--lr-warmup-samples",
    "--lr-wsd-decay-iters", "--lr-wsd-decay-samples", "--lr-wsd-decay-style", "--make-vocab-size-divisible-by",
    "--max-position-embeddings", "--micro-batch-size", "--min-loss-scale", "--min-lr", "--no-load-optim",
    "--no-load-rng", "--no-position-embedding", "--norm-epsilon", "--normalization", "--num-attention-heads",
    "--num-layers", "--num-layers-per-virtual-pipeline-stage", "--num-query-groups",
    "--num-virtual-stages-per-pipeline-rank", "--num-workers", "--optimizer", "--overlap-grad-reduce",
    "--overlap-param-gather", "--per-split-data-args-path", "--pipeline-model-parallel-size",
    "--position-embedding-type", "--recompute-activations", "--recompute-granularity", "--recompute-method",
    "--recompute-num-layers", "--reset-attention-mask", "--reset-position-ids", "--rotary-base", "--rotary-percent",
    "--save", "--save-interval", "--seed", "--seq-length", "--sequence-parallel", "--split", "--swiglu",
    "--tensor-model-parallel-size", "--tensorboard-dir", "--tokenizer-model", "--tokenizer-type", "--train-iters",
    "--train-samples", "--untie-embeddings-and-output-weights", "--use-distributed-optimizer",
    "--use-rotary-position-embeddings", "--vocab-size", "--weight-decay",
)
IGNORED = (
    "--attention-backend", "--cross-entropy-fusion-impl", "--cross-entropy-loss-fusion", "--distributed-backend",
    "--empty-unused-memory-level", "--log-memory-to-tensorboard",
    "--log-num-zeros-in-grad", "--log-params-norm", "--log-progress", "--log-timers-to-tensorboard",
    "--log-validation-ppl-to-tensorboard", "--manual-gc",
    "--manual-gc-interval", "--no-bias-dropout-fusion", "--no-bias-swiglu-fusion",
    "--no-create-attention-mask-in-dataloader", "--no-gradient-accumulation-fusion", "--no-manual-gc-eval",
    "--no-masked-softmax-fusion", "--no-mmap-bin-files", "--no-persist-layer-norm", "--no-rope-fusion", "--profile",
    "--profile-ranks", "--profile-step-end", "--profile-step-start", "--rope-scaling-factor",
    "--tensorboard-log-interval", "--tensorboard-queue-size", "--tiktoken-pattern", "--timing-log-level",
    "--transformer-impl", "--use-cpu-initialization", "--use-flash-attn", "--use-mcore-models",
    "--use-pytorch-profiler", "--wandb-exp-name", "--wandb-project", "--wandb-save-dir",
)
REFUSED = (
    "--add-qkv-bias", "--apply-layernorm-1p", "--apply-residual-connection-post-layernorm",
    "--decoder-first-pipeline-num-layers",
    "--decoder-last-pipeline-num-layers", "--decoupled-lr", "--decoupled-min-lr", "--end-weight-decay",
    "--expert-model-parallel-size", "--fp32-residual-connection", "--fp8-amax-compute-algo",
    "--fp8-amax-history-len", "--fp8-format", "--fp8-interval", "--fp8-margin", "--fp8-param-gather", "--fp8-recipe",
    "--merge-file", "--mock-data", "--multi-latent-attention", "--num-experts", "--openai-gelu", "--qk-layernorm",
    "--rampup-batch-size", "--rotary-interleaved", "--squared-relu", "--start-weight-decay",
    "--step-batch-size-schedule", "--test-data-path", "--tp-comm-overlap", "--train-data-path", "--use-megatron-fsdp",
    "--use-rope-scaling", "--use-torch-fsdp2", "--valid-data-path", "--vocab-file", "--weight-decay-incr-style",
)
LLAMA = "contradicts the Llama architecture this project builds"


def _problems(error: ConfigError) -> list[str]:
    return [line.strip()[2:] for line in str(error).splitlines() if line.strip().startswith("- ")]


def _without(argv: list[str], flags: set[str]) -> list[str]:
    """`argv` less each of `flags` and its values."""
    kept, dropping = [], False
    for token in argv:
        if token.startswith("--"):
            dropping = token in flags
        if not dropping:
            kept.append(token)
    return kept


def _script(argv: list[str], corpus, tmp_path) -> list[str]:
    """A script's flags with its paths replaced: the test's data, tokenizer, GPT-2 BPE files (refused,
    so anything will do) and output directories."""
    (tmp_path / "gpt2-vocab.json").write_text("{}")
    (tmp_path / "gpt2-merges.txt").write_text("")
    paths = {"$DATA_ARG": corpus["data_path"][1], "$DATA_PATH": corpus["data_path"][1],
             "$TOKENIZER_ARG": str(corpus["tokenizer"]), "$DATA_CACHE_PATH": str(tmp_path / "cache"),
             "$VOCAB_FILE": str(tmp_path / "gpt2-vocab.json"), "$MERGE_FILE": str(tmp_path / "gpt2-merges.txt"),
             "$CHECKPOINT_PATH": str(tmp_path / "checkpoints"), "$TENSORBOARD_LOGS_PATH": str(tmp_path / "tb")}
    return [paths.get(token, token) for token in argv]


# What a Megatron-LM user adds for this project: the DWM's validation set (LAMBADA-style) and, for the
# GPT script, whose GPT-2 BPE files are refused, a tokenizer this project reads.
def _additions(corpus, script: list[str]) -> list[str]:
    tokenizer = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(corpus["tokenizer"])]
    return ["--dwm-valid-data-path", str(corpus["valid"]), *([] if "--tokenizer-model" in script else tokenizer)]


@pytest.mark.parametrize("script,world_size,refused",
                         [(LLAMA3_8B_FP8, 8, LLAMA3_REFUSED), (GPT3_175B, 4, GPT3_REFUSED)],
                         ids=["llama3_8b_h100_fp8", "gpt3_175b_distributed"])
def test_megatron_lm_scripts_parse_but_for_the_refused_flags(script, world_size, refused, corpus, tmp_path):
    argv = [*_script(script, corpus, tmp_path), *_additions(corpus, script)]
    with pytest.raises(ConfigError) as error:
        parse_args(argv, world_size=world_size)
    problems = _problems(error.value)
    assert {problem.split(":")[0].split()[0] for problem in problems} == refused, problems
    assert all("not supported yet" in problem for problem in problems), problems

    args = parse_args(_without(argv, refused), world_size=world_size)
    assert megatron_flags.megatron_flag_problems(args) == []
    expected = PRESETS["tiny"]  # the sizes were shrunk to its own; the other model flags are the Llama recipe
    if script is LLAMA3_8B_FP8:  # its head dimension given, as the preset's; its RoPE base and vocabulary
        expected = replace(expected, kv_channels=16, rotary_base=1000000, vocab_size=256)
    assert model_arch(args) == expected
    assert args.init_method_std == float(script[script.index("--init-method-std") + 1])
    if "--train-samples" in script:  # sample-based: Megatron-LM's iterations
        assert args.train_iters == int(script[script.index("--train-samples") + 1]) // args.global_batch_size


def test_gpt_script_warm_up_is_its_fraction_of_the_decay(corpus, tmp_path):
    argv = [*_without(_script(GPT3_175B, corpus, tmp_path), GPT3_REFUSED), *_additions(corpus, GPT3_175B)]
    args = parse_args(argv, world_size=4)
    assert args.lr_warmup_iters == pytest.approx(0.001 * 86)  # Megatron-LM's: the schedule counts samples


def test_the_classification_is_complete_and_consistent():
    assert sorted(megatron_flags.SUPPORTED) == sorted(SUPPORTED)
    assert sorted(megatron_flags.IGNORED) == sorted(IGNORED)
    assert sorted(megatron_flags.REFUSED) == sorted(REFUSED)
    assert len(set(SUPPORTED) | set(IGNORED) | set(REFUSED)) == len(SUPPORTED) + len(IGNORED) + len(REFUSED)
    options = {option: action for action in build_parser()._actions for option in action.option_strings}
    assert [flag for flag in (*SUPPORTED, *IGNORED, *REFUSED) if flag not in options] == []
    destinations = [action.dest for action in build_parser()._actions]
    assert len(destinations) == len(set(destinations)), "two flags share a destination"


def _values(spec: megatron_flags.Flag) -> list[str]:
    """Values Megatron-LM accepts for the flag, other than its default."""
    if spec.takes is None:
        return []
    sample = {int: "2", float: "0.5", str: "x"}[spec.takes]
    return [sample] * (spec.nargs if isinstance(spec.nargs, int) else 1)


@pytest.mark.parametrize("flag", REFUSED)
def test_refused_flag_is_named(flag, data_flags):
    spec = megatron_flags.REFUSED[flag]
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, flag, *_values(spec)], world_size=1)
    [problem] = _problems(error.value)
    assert problem.startswith(f"{flag}") and ("not supported yet" in problem or LLAMA in problem), problem


@pytest.mark.parametrize("flag", [flag for flag in REFUSED if megatron_flags.REFUSED[flag].accepted is not None])
def test_refused_flag_at_megatron_default_is_accepted(flag, data_flags):
    spec = megatron_flags.REFUSED[flag]
    parse_args([*data_flags, flag, str(spec.accepted)], world_size=1)


@pytest.mark.parametrize("flags,message", [
    (["--normalization", "LayerNorm"], f"--normalization LayerNorm: {LLAMA} (RMSNorm)"),
    (["--position-embedding-type", "learned_absolute"],
     f"--position-embedding-type learned_absolute: {LLAMA} (rotary position embeddings: rope)"),
    (["--attention-dropout", "0.1"], f"--attention-dropout 0.1: {LLAMA} (no dropout: 0)"),
    (["--hidden-dropout", "0.1"], f"--hidden-dropout 0.1: {LLAMA} (no dropout: 0)"),
    (["--rotary-percent", "0.5"], f"--rotary-percent 0.5: {LLAMA} (RoPE on the whole head: 1.0)"),
    (["--squared-relu"], f"--squared-relu: {LLAMA} (SwiGLU)"),
    (["--qk-layernorm"], f"--qk-layernorm: {LLAMA} (no query/key norm)"),
    (["--optimizer", "sgd"], "--optimizer sgd: not supported yet (only adam, as AdamW)"),
    (["--ckpt-format", "torch"], "--ckpt-format torch: not supported yet (checkpoints are megatron-core's torch_dist)"),
])
def test_a_value_contrary_to_what_is_built_is_refused(flags, message, data_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, *flags], world_size=1)
    assert _problems(error.value) == [message]


def test_fixed_flags_take_their_value(data_flags):
    argv = [*data_flags, "--normalization", "RMSNorm", "--position-embedding-type", "rope", "--attention-dropout", "0",
            "--hidden-dropout", "0.0", "--rotary-percent", "1", "--optimizer", "adam", "--ckpt-format", "torch_dist",
            "--lr-wsd-decay-style", "exponential", "--swiglu", "--disable-bias-linear",
            "--use-rotary-position-embeddings", "--no-position-embedding", "--accumulate-allreduce-grads-in-fp32",
            "--log-throughput"]
    assert megatron_flags.ignored_flags(parse_args(argv, world_size=1)) == []


def _notice(args, capsys, monkeypatch, rank: int) -> list[str]:
    import pretrain_dwm

    monkeypatch.setenv("RANK", str(rank))
    pretrain_dwm.report_ignored_flags(args)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("flag", IGNORED)
def test_ignored_flag_is_accepted_and_reported_once(flag, data_flags, capsys, monkeypatch):
    args = parse_args([*data_flags, flag, *_values(megatron_flags.IGNORED[flag])], world_size=1)
    assert _notice(args, capsys, monkeypatch, rank=0) == [
        f"pretrain_dwm.py: ignoring Megatron-LM flags without effect here: {flag}"]
    assert _notice(args, capsys, monkeypatch, rank=1) == []  # rank 0 speaks for the job


def test_ignored_flags_share_one_line(data_flags, capsys, monkeypatch):
    argv = list(data_flags)
    for flag in IGNORED:
        argv += [flag, *_values(megatron_flags.IGNORED[flag])]
    [line] = _notice(parse_args(argv, world_size=1), capsys, monkeypatch, rank=0)
    assert sorted(line.split(": ")[-1].split()) == sorted(IGNORED)


def test_no_notice_without_ignored_flags(data_flags, capsys, monkeypatch):
    assert _notice(parse_args(data_flags, world_size=1), capsys, monkeypatch, rank=0) == []


@pytest.mark.parametrize("flags,groups", [
    ([], 2),  # the tiny preset's
    (["--group-query-attention"], 1),  # Megatron-LM's default number of groups
    (["--group-query-attention", "--num-query-groups", "4"], 4),
    (["--num-query-groups", "4"], 4),
])
def test_group_query_attention(flags, groups):
    assert model_arch(build_parser().parse_args(flags)).kv_heads == groups


def test_model_recipe_flags_set_the_architecture():
    args = build_parser().parse_args(["--model-preset", "llama2-7b", "--rotary-base", "500000",
                                      "--norm-epsilon", "1e-6", "--untie-embeddings-and-output-weights"])
    assert model_arch(args) == replace(PRESETS["llama2-7b"], rotary_base=500000, norm_epsilon=1e-6)


def test_fp16_loss_scaling_takes_megatron_defaults(data_flags):
    from megatron.core.optimizer import OptimizerConfig

    from megatron_dwm.training.build import LossScaling

    args = parse_args([*data_flags, "--fp16"], world_size=1)
    assert (args.loss_scale, args.initial_loss_scale, args.min_loss_scale, args.loss_scale_window,
            args.hysteresis) == (None, 2**32, 1.0, 1000, 2)  # Megatron-LM's
    defaults = OptimizerConfig()
    assert LossScaling.from_args(args) == LossScaling(defaults.loss_scale, defaults.initial_loss_scale,
                                                      defaults.min_loss_scale, defaults.loss_scale_window,
                                                      defaults.hysteresis)


@pytest.mark.parametrize("flags,message", [
    (["--fp16", "--bf16"], "--fp16 and --bf16 exclude each other: keep one of them"),
    (["--fp16", "--initial-loss-scale", "4", "--min-loss-scale", "8"],
     "--min-loss-scale 8.0 exceeds --initial-loss-scale 4.0"),
    (["--fp16", "--hysteresis", "0"], "--hysteresis 0 must be >= 1"),
    (["--fp16", "--loss-scale", "0"], "--loss-scale 0.0 must be > 0"),
])
def test_fp16_flags_are_checked(flags, message, data_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, *flags], world_size=1)
    assert _problems(error.value) == [message]


def test_warm_up_fraction_and_iterations_exclude_each_other(data_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, "--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "2"], world_size=1)
    assert _problems(error.value) == [
        "--lr-warmup-fraction 0.1 and --lr-warmup-iters 2 both set the warm-up: keep one of them"]


def test_docs_list_every_classified_flag():
    text = (REPO / "docs" / "launch.md").read_text()
    section = text.split("## Megatron-LM flags", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`(--[a-z0-9-]+)", section))
    assert sorted({*SUPPORTED, *IGNORED, *REFUSED} - listed) == []


def test_sample_based_training_derives_its_iterations_and_schedule(data_flags):
    args = parse_args([*data_flags, "--global-batch-size", "8", "--train-samples", "52", "--lr-warmup-fraction", "0.1"])
    assert (args.train_iters, args.lr_decay_samples, args.lr_warmup_samples) == (6, 52, 5.2)
    assert (args.lr_decay_iters, args.lr_warmup_iters) == (None, 0)  # the sample flags drive the schedule
    assert parse_args(data_flags).train_iters == 10  # neither given: the default


@pytest.mark.parametrize("flags,message", [
    (["--train-iters", "5", "--train-samples", "40"],
     "--train-iters 5 and --train-samples 40 both set the run's length: keep one of them"),
    (["--train-samples", "40", "--lr-decay-iters", "4"],
     "--lr-decay-iters is for iteration-based training; with --train-samples give --lr-decay-samples"),
    (["--train-iters", "5", "--lr-warmup-samples", "8"],
     "--lr-warmup-samples is for sample-based training; with --train-iters give --lr-warmup-iters"),
    (["--train-samples", "4"], "--train-samples 4 is less than one global batch (8)"),
    (["--train-samples", "40", "--lr-warmup-samples", "40"],
     "--lr-warmup-samples 40 must be below --lr-decay-samples 40"),
    (["--train-samples", "40", "--lr-decay-style", "WSD"], "--lr-decay-style WSD needs --lr-wsd-decay-samples"),
    (["--train-samples", "40", "--lr-warmup-samples", "8", "--lr-warmup-fraction", "0.1"],
     "--lr-warmup-fraction 0.1 and --lr-warmup-samples 8 both set the warm-up: keep one of them"),
])
def test_sample_and_iteration_flags_are_not_mixed(flags, message, data_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, "--global-batch-size", "8", *flags])
    assert message in _problems(error.value), _problems(error.value)


@pytest.mark.parametrize("flags,world_size,message", [
    (["--recompute-granularity", "full"], 1, "--recompute-granularity full needs --recompute-method uniform or block"),
    (["--recompute-method", "block"], 1, "--recompute-method block applies to --recompute-granularity full"),
    (["--recompute-activations", "--recompute-method", "uniform"], 1,
     "--recompute-method uniform applies to --recompute-granularity full"),
    (["--recompute-activations", "--recompute-granularity", "full"], 1,
     "--recompute-activations means --recompute-granularity selective, not --recompute-granularity full"),
    (["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "0"], 1,
     "--recompute-num-layers 0 must be >= 1"),
    (["--overlap-param-gather", "--overlap-grad-reduce"], 2,
     "--overlap-param-gather needs --use-distributed-optimizer and --overlap-grad-reduce"),
    (["--overlap-param-gather", "--use-distributed-optimizer"], 2,
     "--overlap-param-gather needs --use-distributed-optimizer and --overlap-grad-reduce"),
    (["--sequence-parallel", "--tensor-model-parallel-size", "2", "--seq-length", "65"], 2,
     "--sequence-parallel splits the sequence over tensor-parallel ranks: --seq-length 65 is not divisible by "
     "--tensor-model-parallel-size 2"),
    (["--ddp-bucket-size", "0"], 1, "--ddp-bucket-size 0 must be >= 1"),
])
def test_memory_and_overlap_flags_are_checked_as_in_megatron_lm(flags, world_size, message, data_flags):
    with pytest.raises(ConfigError) as error:
        parse_args([*data_flags, *flags], world_size=world_size)
    assert _problems(error.value) == [message]


def test_memory_and_overlap_flags_reach_megatron_core(data_flags):
    args = parse_args([*data_flags, "--tensor-model-parallel-size", "2", "--sequence-parallel",
                       "--recompute-granularity", "full", "--recompute-method", "block", "--recompute-num-layers", "2",
                       "--bf16", "--grad-reduce-in-bf16", "--overlap-grad-reduce", "--ddp-bucket-size", "1000"],
                      world_size=2)
    assert transformer_options(args) == dict(sequence_parallel=True, recompute_granularity="full",
                                             recompute_method="block", recompute_num_layers=2)
    assert ddp_options(args) == dict(use_distributed_optimizer=False, overlap_grad_reduce=True,
                                     overlap_param_gather=False, bucket_size=1000, grad_reduce_in_fp32=False)
    selective = parse_args([*data_flags, "--recompute-activations", "--grad-reduce-in-bf16"], world_size=1)
    assert transformer_options(selective) == dict(sequence_parallel=False, recompute_granularity="selective")
    assert ddp_options(selective)["grad_reduce_in_fp32"]  # --grad-reduce-in-bf16 acts under --bf16 only

"""Megatron-LM's pretraining flags, each classified by what `pretrain_dwm.py` does with it.

A command line of Megatron-LM's GPT and Llama examples parses here unchanged. Each of its flags is:

- supported: same name and meaning. Most are ordinary flags of :mod:`megatron_dwm.arguments`
  (ARGUMENT_FLAGS); the rest (FIXED) state what this project always does, the Llama recipe
  included, and take only that value (``--normalization RMSNorm``, ``--hidden-dropout 0``): another
  value is refused.
- ignored (IGNORED): changes how Megatron-LM runs (kernels, memory, profiling, extra logs), not
  what is trained; accepted, without effect, and listed once at start-up. Its value is not read.
- refused (REFUSED): a feature not supported yet, or one the Llama architecture does not have;
  refused by `parse_args`, naming the flag, unless given with Megatron-LM's default (off) value,
  such as ``--expert-model-parallel-size 1``.

Without model flags the model is this project's Llama, not Megatron-LM's default GPT (LayerNorm,
GeLU, learned positions, dropout 0.1, biases, tied embeddings). Imports neither torch nor
megatron-core.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    """A Megatron-LM flag defined here: `takes` is the type of its value (None: a switch), `nargs`
    argparse's; `accepted` the one value it may have (True: a switch that may be given), and
    `reason` why any other is refused."""

    takes: type | None = None
    nargs: int | str | None = None
    accepted: object = None
    reason: str = "not supported yet"


SWITCH = Flag()  # a switch: refused when given (in REFUSED), or ignored (in IGNORED)
ON = Flag(accepted=True)  # a switch that states what this project always does


def _llama(what: str) -> str:
    return f"contradicts the Llama architecture this project builds ({what})"


def _only(takes: type, accepted: object, reason: str) -> Flag:
    return Flag(takes, accepted=accepted, reason=reason)


# Megatron-LM flags that are ordinary flags of megatron_dwm.arguments, with the same meaning.
ARGUMENT_FLAGS: tuple[str, ...] = (
    # model and precision
    "--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--group-query-attention",
    "--num-query-groups", "--kv-channels", "--max-position-embeddings", "--vocab-size",
    "--make-vocab-size-divisible-by", "--seq-length", "--rotary-base", "--norm-epsilon",
    "--untie-embeddings-and-output-weights", "--init-method-std", "--bf16", "--fp16", "--loss-scale",
    "--initial-loss-scale", "--min-loss-scale", "--loss-scale-window", "--hysteresis",
    # parallelism
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--context-parallel-size",
    "--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank", "--use-distributed-optimizer",
    "--distributed-timeout-minutes", "--sequence-parallel", "--overlap-grad-reduce", "--overlap-param-gather",
    "--ddp-bucket-size", "--grad-reduce-in-bf16",
    # memory
    "--recompute-activations", "--recompute-granularity", "--recompute-method", "--recompute-num-layers",
    # training
    "--micro-batch-size", "--global-batch-size", "--train-iters", "--train-samples", "--seed", "--exit-interval",
    "--exit-duration-in-mins", "--exit-signal-handler", "--calculate-per-token-loss",
    # optimizer and learning-rate schedule
    "--lr", "--min-lr", "--lr-decay-style", "--lr-decay-iters", "--lr-warmup-iters", "--lr-warmup-fraction",
    "--lr-warmup-init", "--lr-wsd-decay-iters", "--lr-decay-samples", "--lr-warmup-samples", "--lr-wsd-decay-samples",
    "--weight-decay", "--clip-grad", "--adam-beta1", "--adam-beta2", "--adam-eps",
    # data
    "--data-path", "--split", "--per-split-data-args-path", "--data-cache-path", "--tokenizer-type",
    "--tokenizer-model", "--num-workers", "--eod-mask-loss", "--reset-position-ids", "--reset-attention-mask",
    # checkpointing
    "--save", "--save-interval", "--load", "--ckpt-step", "--no-load-optim", "--no-load-rng", "--finetune",
    # evaluation and logging
    "--eval-interval", "--eval-iters", "--log-interval", "--tensorboard-dir", "--logging-level",
)

# Supported flags defined here: what this project always does, so only that value is accepted.
FIXED: dict[str, Flag] = {
    "--swiglu": ON,
    "--disable-bias-linear": ON,
    "--use-rotary-position-embeddings": ON,
    "--no-position-embedding": ON,  # no learned position embedding: RoPE
    "--accumulate-allreduce-grads-in-fp32": ON,
    "--log-throughput": ON,  # every log line has it
    "--normalization": _only(str, "RMSNorm", _llama("RMSNorm")),
    "--position-embedding-type": _only(str, "rope", _llama("rotary position embeddings: rope")),
    "--rotary-percent": _only(float, 1.0, _llama("RoPE on the whole head: 1.0")),
    "--attention-dropout": _only(float, 0.0, _llama("no dropout: 0")),
    "--hidden-dropout": _only(float, 0.0, _llama("no dropout: 0")),
    "--optimizer": _only(str, "adam", "not supported yet (only adam, as AdamW)"),
    "--ckpt-format": _only(str, "torch_dist", "not supported yet (checkpoints are megatron-core's torch_dist)"),
    "--lr-wsd-decay-style": _only(str, "exponential", "not supported yet (only exponential)"),
}

SUPPORTED: tuple[str, ...] = ARGUMENT_FLAGS + tuple(FIXED)

_VALUE = Flag(str)  # an ignored flag's value, not read

IGNORED: dict[str, Flag] = {
    # models, kernels and fusions: always megatron-core's GPTModel, the layer spec chosen by platform
    **dict.fromkeys(("--use-mcore-models", "--use-flash-attn", "--cross-entropy-loss-fusion",
                     "--no-gradient-accumulation-fusion", "--no-masked-softmax-fusion", "--no-bias-swiglu-fusion",
                     "--no-bias-dropout-fusion", "--no-rope-fusion", "--no-persist-layer-norm",
                     "--use-cpu-initialization"), SWITCH),
    **dict.fromkeys(("--transformer-impl", "--attention-backend", "--cross-entropy-fusion-impl",
                     "--distributed-backend"), _VALUE),
    # memory management and data loading
    "--manual-gc": SWITCH, "--manual-gc-interval": _VALUE, "--no-manual-gc-eval": SWITCH,
    "--empty-unused-memory-level": _VALUE, "--no-mmap-bin-files": SWITCH,
    "--no-create-attention-mask-in-dataloader": SWITCH, "--tiktoken-pattern": _VALUE,
    # no effect without --use-rope-scaling (refused), as in Megatron-LM
    "--rope-scaling-factor": _VALUE,
    # profiling and further logs
    **dict.fromkeys(("--profile", "--use-pytorch-profiler", "--log-params-norm", "--log-num-zeros-in-grad",
                     "--log-timers-to-tensorboard", "--log-validation-ppl-to-tensorboard",
                     "--log-memory-to-tensorboard", "--log-progress"), SWITCH),
    **dict.fromkeys(("--profile-step-start", "--profile-step-end", "--tensorboard-log-interval",
                     "--tensorboard-queue-size", "--timing-log-level", "--wandb-project", "--wandb-exp-name",
                     "--wandb-save-dir"), _VALUE),
    "--profile-ranks": Flag(str, nargs="+"),
}

REFUSED: dict[str, Flag] = {
    # parallelism and memory
    "--expert-model-parallel-size": _only(int, 1, "not supported yet (only 1)"),
    **dict.fromkeys(("--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers"), Flag(int)),
    **dict.fromkeys(("--tp-comm-overlap", "--use-torch-fsdp2", "--use-megatron-fsdp"), SWITCH),
    # precision
    "--fp8-format": Flag(str), "--fp8-param-gather": SWITCH,
    "--fp8-recipe": _only(str, "delayed", "not supported yet (fp8)"),
    "--fp8-margin": _only(int, 0, "not supported yet (fp8)"),
    "--fp8-interval": _only(int, 1, "not supported yet (fp8)"),
    "--fp8-amax-history-len": _only(int, 1, "not supported yet (fp8)"),
    "--fp8-amax-compute-algo": _only(str, "most_recent", "not supported yet (fp8)"),
    # loss, optimizer and schedule
    **dict.fromkeys(("--decoupled-lr", "--decoupled-min-lr", "--start-weight-decay", "--end-weight-decay"),
                    Flag(float)),
    "--weight-decay-incr-style": _only(str, "constant", "not supported yet (only constant)"),
    "--rampup-batch-size": Flag(int, nargs=3, reason="not supported yet: the global batch size is fixed"),
    "--step-batch-size-schedule": Flag(str, reason="not supported yet: the global batch size is fixed"),
    # data
    "--mock-data": Flag(reason="not supported yet: give --data-path"),
    **dict.fromkeys(("--vocab-file", "--merge-file"),
                    Flag(str, reason="not supported yet (GPT-2 BPE files): give --tokenizer-type "
                                     "HuggingFaceTokenizer and its tokenizer.json as --tokenizer-model")),
    **dict.fromkeys(("--train-data-path", "--valid-data-path", "--test-data-path"),
                    Flag(str, nargs="*", reason="not supported yet: give the blends with --per-split-data-args-path")),
    # model: beyond this project's Llama
    "--apply-layernorm-1p": SWITCH, "--use-rope-scaling": SWITCH, "--fp32-residual-connection": SWITCH,
    "--multi-latent-attention": SWITCH, "--num-experts": Flag(int),
    "--qk-layernorm": Flag(reason=_llama("no query/key norm")),
    "--add-qkv-bias": Flag(reason=_llama("no biases")),
    "--rotary-interleaved": Flag(reason=_llama("RoPE rotates the two halves of each head")),
    "--squared-relu": Flag(reason=_llama("SwiGLU")), "--openai-gelu": Flag(reason=_llama("SwiGLU")),
    "--apply-residual-connection-post-layernorm": Flag(reason=_llama("pre-norm residuals")),
}


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _add(group: argparse._ArgumentGroup, flag: str, spec: Flag, help: str) -> None:
    """Register `flag`; its destination is set only when it is given (default SUPPRESS)."""
    if spec.takes is None:
        group.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help)
    else:
        group.add_argument(flag, nargs=spec.nargs, default=argparse.SUPPRESS, help=help)


def add_megatron_flags(parser: argparse.ArgumentParser) -> None:
    """Add FIXED, IGNORED and REFUSED to `parser` (the ignored and refused ones out of --help's
    flag list, named in their group's description)."""
    group = parser.add_argument_group(
        "Megatron-LM flags", "The flags below take only the value this project always uses "
        f"(docs/launch.md#megatron-lm-flags). Also accepted, without effect (listed at start-up): "
        f"{', '.join(IGNORED)}. Refused unless given Megatron-LM's default value (not supported yet, or not "
        f"Llama): {', '.join(REFUSED)}.")
    for flag, spec in FIXED.items():
        _add(group, flag, spec, "always so here" if spec.takes is None else f"only {spec.accepted} here")
    for flag, spec in {**IGNORED, **REFUSED}.items():
        _add(group, flag, spec, argparse.SUPPRESS)


def _given(args: argparse.Namespace, flags: dict[str, Flag]) -> dict[str, object]:
    """The flags of `flags` given on the command line, with their values as given."""
    return {flag: getattr(args, _dest(flag)) for flag in flags if hasattr(args, _dest(flag))}


def _accepted(spec: Flag, value: object) -> bool:
    if spec.takes is None:
        return spec.accepted is True
    try:
        parsed = [spec.takes(item) for item in value] if isinstance(value, list) else spec.takes(value)
    except ValueError:
        return False
    return parsed == spec.accepted


def megatron_flag_problems(args: argparse.Namespace) -> list[str]:
    """One problem per FIXED or REFUSED flag given with a value this project does not accept."""
    problems = []
    for flag, value in _given(args, {**FIXED, **REFUSED}).items():
        spec = FIXED.get(flag) or REFUSED[flag]
        if not _accepted(spec, value):
            shown = "" if spec.takes is None else " " + " ".join(value if isinstance(value, list) else [value])
            problems.append(f"{flag}{shown}: {spec.reason}")
    return problems


def ignored_flags(args: argparse.Namespace) -> list[str]:
    """The IGNORED flags given on the command line, in IGNORED's order."""
    return list(_given(args, IGNORED))


def ignored_flags_notice(args: argparse.Namespace) -> str | None:
    """The start-up line naming the ignored flags given, or None if there are none."""
    flags = ignored_flags(args)
    return f"pretrain_dwm.py: ignoring Megatron-LM flags without effect here: {' '.join(flags)}" if flags else None

"""Command-line flags (Megatron-LM's names wherever Megatron has the flag), validated up front.

`parse_args` reports every inconsistency at once, naming the flags at fault, before any process
group is created or any data is read.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from megatron_dwm.model.presets import PRESETS, LlamaArch, get_preset
from megatron_dwm.parallel import RankLayout
from megatron_dwm.platform import validate_platform_options

MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "kv_channels", "max_position_embeddings", "vocab_size")


class ConfigError(ValueError):
    """An impossible configuration; the message lists every problem found."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pretrain_dwm.py",
        description="Pretrain a Llama-2 model on megatron-core with per-sample data weighting.",
        allow_abbrev=False,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model-preset", default="tiny", choices=sorted(PRESETS),
                       help="Llama-2 size preset; the shape flags below override its fields")
    model.add_argument("--num-layers", type=int, help="number of transformer layers")
    model.add_argument("--hidden-size", type=int, help="transformer hidden size")
    model.add_argument("--ffn-hidden-size", type=int, help="SwiGLU inner size")
    model.add_argument("--num-attention-heads", type=int, help="number of query heads")
    model.add_argument("--num-query-groups", type=int,
                       help="number of key/value heads (grouped-query attention); default: as many as heads")
    model.add_argument("--kv-channels", type=int, help="head dimension; default hidden size / heads")
    model.add_argument("--max-position-embeddings", type=int, help="longest sequence RoPE is built for")
    model.add_argument("--vocab-size", type=int, help="vocabulary size (default: from the tokenizer)")
    model.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                       help="pad the vocabulary to a multiple of this x TP (as Megatron-LM)")
    model.add_argument("--seq-length", type=int, default=256, help="training sequence length")
    model.add_argument("--bf16", action="store_true", help="bf16 parameters and compute (GPU)")
    model.add_argument("--loss-kernel", default="auto", choices=["auto", "fused", "torch"],
                       help="per-sample weighted cross-entropy: fused Triton kernel, torch reference, "
                            "or auto (fused on GPU when Triton is importable)")

    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument("--tensor-model-parallel-size", type=int, default=1, help="tensor-parallel size (TP)")
    parallel.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="pipeline-parallel size (PP)")
    parallel.add_argument("--dwm-ranks", type=int, default=0,
                          help="ranks at the end of the world reserved for the data weighting model "
                               "(0: the DWM runs on the training ranks)")
    parallel.add_argument("--use-distributed-optimizer", action="store_true",
                          help="shard optimizer state over data-parallel ranks (megatron-core, GPU only)")
    parallel.add_argument("--distributed-timeout-minutes", type=int, default=10,
                          help="timeout of collective operations")

    training = parser.add_argument_group("training")
    training.add_argument("--micro-batch-size", type=int, default=1, help="samples per micro-batch per DP rank")
    training.add_argument("--global-batch-size", type=int, default=None,
                          help="samples per optimizer step over all DP ranks (default: micro batch x DP)")
    training.add_argument("--train-iters", type=int, default=10, help="optimizer steps to run")
    training.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    training.add_argument("--seed", type=int, default=1234, help="random seed")
    return parser


def parse_args(argv: Sequence[str] | None = None, world_size: int | None = None) -> argparse.Namespace:
    """Parse and validate; exits with one message listing every problem (argparse's convention)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        validate_args(args, world_size)
    except ConfigError as error:
        parser.error(str(error))
    return args


def model_arch(args: argparse.Namespace) -> LlamaArch:
    """The preset with the explicit shape flags applied."""
    return get_preset(args.model_preset).with_overrides(**{k: getattr(args, k) for k in MODEL_SHAPE_FLAGS})


def validate_args(args: argparse.Namespace, world_size: int | None = None) -> None:
    """Raise ConfigError listing every inconsistency; fill in derived values (global batch)."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    problems: list[str] = []
    try:
        arch = model_arch(args)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size

    layout = RankLayout(world_size, tp, pp, args.dwm_ranks)
    problems += layout.problems()
    if tp >= 1 and arch.num_attention_heads % tp:
        problems.append(f"--num-attention-heads {arch.num_attention_heads} is not divisible by "
                        f"--tensor-model-parallel-size {tp}")
    if tp >= 1 and arch.kv_heads % tp:
        problems.append(f"--num-query-groups {arch.kv_heads} is not divisible by --tensor-model-parallel-size {tp}")
    if arch.num_attention_heads % arch.kv_heads:
        problems.append(f"--num-attention-heads {arch.num_attention_heads} is not divisible by "
                        f"--num-query-groups {arch.kv_heads}")
    if pp >= 1 and arch.num_layers % pp:
        problems.append(f"--num-layers {arch.num_layers} is not divisible by --pipeline-model-parallel-size {pp}")
    if args.seq_length > arch.max_position_embeddings:
        problems.append(f"--seq-length {args.seq_length} exceeds --max-position-embeddings "
                        f"{arch.max_position_embeddings}")

    if not layout.problems():
        dp = layout.data_parallel_size
        if args.global_batch_size is None:
            args.global_batch_size = args.micro_batch_size * dp
        if args.global_batch_size % (args.micro_batch_size * dp):
            problems.append(f"--global-batch-size {args.global_batch_size} is not divisible by "
                            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {dp}")
    for flag in ("micro_batch_size", "train_iters", "seq_length"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be >= 1")
    problems += validate_platform_options(args.use_distributed_optimizer)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))

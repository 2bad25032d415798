"""Command-line flags (Megatron-LM's names wherever Megatron has the flag), validated up front.

`parse_args` reports every inconsistency at once, naming the flags at fault, before any process
group is created or any data is read.
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

from megatron_dwm.data.tokenizer import TOKENIZER_TYPES
from megatron_dwm.model.presets import PRESETS, LlamaArch, get_preset
from megatron_dwm.parallel import RankLayout
from megatron_dwm.platform import validate_platform_options

MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "kv_channels", "max_position_embeddings", "vocab_size")
LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")


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
    training.add_argument("--train-iters", type=int, default=10, help="optimizer steps to run in total")
    training.add_argument("--seed", type=int, default=1234, help="random seed")
    training.add_argument("--exit-interval", type=int, default=None,
                          help="stop (after a checkpoint, if --save) once the iteration is a multiple of this")
    training.add_argument("--exit-duration-in-mins", type=float, default=None,
                          help="stop (after a checkpoint, if --save) once the run has lasted this long")
    training.add_argument("--exit-signal-handler", action="store_true",
                          help="on SIGTERM or SIGUSR1 (SLURM pre-emption), save a checkpoint and exit 0")
    training.add_argument("--max-consecutive-nonfinite-iters", type=int, default=5,
                          help="an iteration whose loss or gradient is NaN/Inf is skipped; halt after this "
                               "many in a row")

    optim = parser.add_argument_group("optimizer and learning-rate schedule")
    optim.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    optim.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the decay")
    optim.add_argument("--lr-decay-style", default="cosine", choices=LR_DECAY_STYLES,
                       help="learning-rate decay after warm-up")
    optim.add_argument("--lr-decay-iters", type=int, default=None,
                       help="iterations over which the learning rate decays (default: --train-iters)")
    optim.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warm-up iterations")
    optim.add_argument("--lr-warmup-init", type=float, default=0.0, help="learning rate at the start of warm-up")
    optim.add_argument("--lr-wsd-decay-iters", type=int, default=None,
                       help="iterations of the final decay of the WSD schedule")
    optim.add_argument("--weight-decay", type=float, default=0.01, help="decoupled weight decay (AdamW)")
    optim.add_argument("--clip-grad", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    optim.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1")
    optim.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2")
    optim.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon")

    dwm = parser.add_argument_group("data weighting model (DWM)")
    dwm.add_argument("--dwm-disable", action="store_true",
                     help="uniform weights (the baseline), through the same loss and loop")
    dwm.add_argument("--dwm-num-layers", type=int, default=2, help="transformer layers of the DWM's sample encoder")
    dwm.add_argument("--dwm-hidden-size", type=int, default=128, help="hidden size of the DWM")
    dwm.add_argument("--dwm-num-attention-heads", type=int, default=4, help="attention heads of the DWM")
    dwm.add_argument("--dwm-seq-length", type=int, default=128,
                     help="the DWM reads this prefix of each sample (at most --seq-length)")
    dwm.add_argument("--dwm-temperature", type=float, default=1.0, help="tau in w = n softmax(s / tau)")
    dwm.add_argument("--dwm-weight-clip", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                     help="clip weights to [MIN, MAX] (then renormalise to mean 1)")
    dwm.add_argument("--dwm-lr", type=float, default=1e-3, help="learning rate of the DWM's Adam")
    dwm.add_argument("--dwm-init", default=None,
                     help="initialise the DWM's encoder from a checkpoint of a small LM (this project's format); "
                          "the encoder then has the LM's shape, and --dwm-num-layers, --dwm-hidden-size and "
                          "--dwm-num-attention-heads are not used")
    dwm.add_argument("--dwm-valid-batch-size", type=int, default=None,
                     help="samples of the validation set per DWM update (a multiple of micro batch x DP; "
                          "default: a quarter of the global batch, rounded down to such a multiple)")
    dwm.add_argument("--dwm-fd-radius", type=float, default=0.01, help="r: the finite-difference step is r / ||d||")
    dwm.add_argument("--dwm-fd-direction", default="adam", choices=["adam", "grad"],
                     help="d = P v with Adam's preconditioner P (adam) or P = 1 (grad)")
    dwm.add_argument("--dwm-stages", type=int, default=1, help="training stages; each opens with a DWM phase")
    dwm.add_argument("--dwm-update-iters", type=int, default=None,
                     help="length of each stage's DWM phase in iterations (default: a quarter of a stage)")
    dwm.add_argument("--dwm-update-interval", type=int, default=1, help="update the DWM every M-th iteration of a DWM phase")
    dwm.add_argument("--dwm-load", default=None, help="load the DWM (only) from this run's checkpoint directory")
    dwm.add_argument("--dwm-freeze", action="store_true", help="never update the DWM (e.g. a transferred one)")
    dwm.add_argument("--dwm-exchange-timeout", type=float, default=300.0,
                     help="with --dwm-ranks > 0: seconds a training rank waits for the DWM ranks' weights before "
                          "the job fails naming the DWM rank (a dead DWM rank is noticed at once)")

    data = parser.add_argument_group("data")
    data.add_argument("--data-path", nargs="*", default=None,
                      help="training blend in Megatron's syntax: [weight] prefix [weight] prefix ...")
    data.add_argument("--split", default="969,30,1",
                      help="train,valid,test proportions of --data-path (as Megatron-LM)")
    data.add_argument("--per-split-data-args-path", default=None,
                      help='JSON file {"train": [...], "valid": [...], "test": [...]} of --data-path lists')
    data.add_argument("--data-cache-path", default=None,
                      help="where megatron-core caches dataset indices (default: next to the data)")
    data.add_argument("--tokenizer-type", default="SentencePieceTokenizer", choices=TOKENIZER_TYPES,
                      help="tokenizer of the preprocessed data")
    data.add_argument("--tokenizer-model", default=None,
                      help="SentencePiece .model or Hugging Face tokenizer.json")
    data.add_argument("--dwm-valid-data-path", default=None,
                      help="LAMBADA-style context + target set (tools/preprocess_lambada.py), evaluated "
                           "every --eval-interval")
    data.add_argument("--num-workers", type=int, default=2, help="data loader worker processes")
    data.add_argument("--eod-mask-loss", action="store_true", help="do not train on end-of-document tokens")
    data.add_argument("--reset-position-ids", action="store_true", help="restart positions at each document")
    data.add_argument("--reset-attention-mask", action="store_true",
                      help="do not attend across documents (builds explicit attention masks)")

    checkpoint = parser.add_argument_group("checkpointing")
    checkpoint.add_argument("--save", default=None, help="checkpoint directory to write")
    checkpoint.add_argument("--save-interval", type=int, default=None, help="iterations between checkpoints")
    checkpoint.add_argument("--load", default=None,
                            help="checkpoint directory to resume from (its newest complete checkpoint)")
    checkpoint.add_argument("--no-load-optim", action="store_true", help="do not load optimizer and scheduler")
    checkpoint.add_argument("--no-load-rng", action="store_true", help="do not load the random-number states")
    checkpoint.add_argument("--finetune", action="store_true",
                            help="load only the model and start at iteration 0 with fresh data and optimizer")

    logging = parser.add_argument_group("evaluation and logging")
    logging.add_argument("--eval-interval", type=int, default=1000, help="iterations between evaluations")
    logging.add_argument("--eval-iters", type=int, default=100,
                         help="global batches of the valid split per evaluation (0: skip it)")
    logging.add_argument("--log-interval", type=int, default=100, help="iterations between log lines")
    logging.add_argument("--tensorboard-dir", default=None, help="TensorBoard event files go here")
    logging.add_argument("--logging-level", type=int, default=30,
                         help="level of megatron-core's Python logging (10 debug, 20 info, 30 warning)")
    logging.add_argument("--metrics-file", default=None,
                         help="JSON-lines metrics log (default: metrics.jsonl in --tensorboard-dir, "
                              "else in --save)")
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
    for flag in ("micro_batch_size", "train_iters", "seq_length", "eval_interval", "log_interval"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be >= 1")
    for flag in ("save_interval", "exit_interval", "lr_decay_iters", "max_consecutive_nonfinite_iters"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            problems.append(f"--{flag.replace('_', '-')} must be >= 1")
    problems += _schedule_problems(args)
    problems += _dwm_problems(args, None if layout.problems() else layout.data_parallel_size)
    problems += _data_problems(args)
    problems += _output_problems(args)
    problems += validate_platform_options(args.use_distributed_optimizer)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def _schedule_problems(args: argparse.Namespace) -> list[str]:
    problems = []
    if args.lr_decay_iters is None:
        args.lr_decay_iters = args.train_iters
    if args.lr_warmup_iters < 0 or (args.lr_decay_iters and args.lr_warmup_iters >= max(args.lr_decay_iters, 1)
                                    and args.lr_warmup_iters > 0):
        problems.append(f"--lr-warmup-iters {args.lr_warmup_iters} must be >= 0 and below --lr-decay-iters "
                        f"{args.lr_decay_iters}")
    if not 0 <= args.min_lr <= args.lr:
        problems.append(f"--min-lr {args.min_lr} must lie in [0, --lr {args.lr}]")
    if args.lr_decay_style == "WSD" and args.lr_wsd_decay_iters is None:
        problems.append("--lr-decay-style WSD needs --lr-wsd-decay-iters")
    return problems


def default_valid_batch_size(args: argparse.Namespace, data_parallel_size: int) -> int:
    """A quarter of the global batch, rounded down to a multiple of micro batch x DP (at least one).

    The outer step's forward+backward on the validation batch is its costliest part after the two
    forward-only passes; a quarter batch keeps a DWM-phase step near 2x a plain one (docs/performance.md)."""
    unit = args.micro_batch_size * data_parallel_size
    return max(unit, args.global_batch_size // 4 // unit * unit)


def _dwm_problems(args: argparse.Namespace, data_parallel_size: int | None) -> list[str]:
    """The DWM's flags; fills in --dwm-update-iters."""
    if args.dwm_disable:
        return [f"--dwm-ranks {args.dwm_ranks} reserves ranks for the DWM, which --dwm-disable turns off: "
                "use --dwm-ranks 0"] if args.dwm_ranks > 0 else []
    problems = []
    if args.dwm_exchange_timeout <= 0:
        problems.append(f"--dwm-exchange-timeout {args.dwm_exchange_timeout} must be > 0 seconds")
    if 1 <= args.dwm_stages <= args.train_iters:
        stage_length = args.train_iters // args.dwm_stages
        if args.dwm_update_iters is None:
            args.dwm_update_iters = max(stage_length // 4, 1)
        if not 0 <= args.dwm_update_iters <= stage_length:
            problems.append(f"--dwm-update-iters {args.dwm_update_iters} must lie in [0, stage length {stage_length}]")
    else:
        problems.append(f"--dwm-stages {args.dwm_stages} must lie in [1, --train-iters {args.train_iters}]")
        args.dwm_update_iters = 1 if args.dwm_update_iters is None else args.dwm_update_iters
    if args.dwm_update_interval < 1:
        problems.append("--dwm-update-interval must be >= 1")
    if args.dwm_valid_batch_size is None and data_parallel_size:  # else the layout's problem is reported
        args.dwm_valid_batch_size = default_valid_batch_size(args, data_parallel_size)
    elif data_parallel_size and (args.dwm_valid_batch_size < 1 or
                                 args.dwm_valid_batch_size % (args.micro_batch_size * data_parallel_size)):
        problems.append(f"--dwm-valid-batch-size {args.dwm_valid_batch_size} is not a positive multiple of "
                        f"--micro-batch-size {args.micro_batch_size} x data-parallel size {data_parallel_size}")
    updates = args.dwm_update_iters > 0 and not args.dwm_freeze
    if updates and args.dwm_valid_data_path is None:
        problems.append("updating the DWM needs its validation set: give --dwm-valid-data-path "
                        "(or --dwm-freeze / --dwm-disable)")
    if updates and args.dwm_fd_direction == "adam" and args.use_distributed_optimizer:
        problems.append("--dwm-fd-direction adam reads Adam's state, which --use-distributed-optimizer shards; "
                        "use --dwm-fd-direction grad")
    if args.dwm_seq_length > args.seq_length:
        problems.append(f"--dwm-seq-length {args.dwm_seq_length} exceeds --seq-length {args.seq_length}")
    if args.dwm_hidden_size % args.dwm_num_attention_heads:
        problems.append(f"--dwm-hidden-size {args.dwm_hidden_size} is not divisible by "
                        f"--dwm-num-attention-heads {args.dwm_num_attention_heads}")
    if args.dwm_temperature <= 0 or args.dwm_fd_radius <= 0 or args.dwm_lr < 0:
        problems.append("--dwm-temperature and --dwm-fd-radius must be > 0, --dwm-lr >= 0")
    if args.dwm_weight_clip is not None and not 0 <= args.dwm_weight_clip[0] < 1 < args.dwm_weight_clip[1]:
        problems.append(f"--dwm-weight-clip {args.dwm_weight_clip}: need 0 <= MIN < 1 < MAX (weights have mean 1)")
    for flag in ("dwm_init", "dwm_load"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            problems.append(f"--{flag.replace('_', '-')} {path}: no such checkpoint directory")
    return problems


def _data_problems(args: argparse.Namespace) -> list[str]:
    """Missing or unreadable inputs: data prefixes, split file, tokenizer, LAMBADA-style set."""
    problems = []
    if (args.data_path is None) == (args.per_split_data_args_path is None):
        problems.append("give the training data with exactly one of --data-path and --per-split-data-args-path")
    elif args.data_path is not None:
        problems += _blend_problems("--data-path", args.data_path)
    elif not os.path.isfile(args.per_split_data_args_path):
        problems.append(f"--per-split-data-args-path {args.per_split_data_args_path}: no such file")
    if args.tokenizer_model is None:
        problems.append(f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-model (a .model or tokenizer.json)")
    elif not os.path.isfile(args.tokenizer_model):
        problems.append(f"--tokenizer-model {args.tokenizer_model}: no such file")
    if args.dwm_valid_data_path is not None and not _indexed_exists(args.dwm_valid_data_path):
        problems.append(f"--dwm-valid-data-path: no {args.dwm_valid_data_path}.bin/.idx")
    return problems


def _blend_problems(flag: str, data_path: list[str]) -> list[str]:
    if not data_path:
        return [f"{flag} is empty"]
    prefixes = data_path if len(data_path) == 1 else data_path[1::2]
    if len(data_path) > 1 and len(data_path) % 2:
        return [f"{flag}: expected weight prefix pairs, got {len(data_path)} values"]
    if len(data_path) > 1:
        try:
            weights = [float(w) for w in data_path[0::2]]
        except ValueError:
            return [f"{flag}: expected weight prefix pairs, found a non-numeric weight in {data_path[0::2]}"]
        if any(w <= 0 for w in weights):
            return [f"{flag}: weights must be positive, got {weights}"]
    return [f"{flag}: no {prefix}.bin/.idx" for prefix in prefixes if not _indexed_exists(prefix)]


def _indexed_exists(prefix: str) -> bool:
    return os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")


def _output_problems(args: argparse.Namespace) -> list[str]:
    """Output directories that cannot be written; checkpoint intervals without a place to save."""
    problems = []
    for flag in ("save", "tensorboard_dir"):
        path = getattr(args, flag)
        if path is not None and not _writable_dir(path):
            problems.append(f"--{flag.replace('_', '-')} {path}: cannot create or write this directory")
    if args.metrics_file is not None and not _writable_dir(os.path.dirname(os.path.abspath(args.metrics_file))):
        problems.append(f"--metrics-file {args.metrics_file}: its directory cannot be written")
    if args.save_interval is not None and args.save is None:
        problems.append("--save-interval needs --save")
    if args.load is not None and os.path.exists(args.load) and not os.path.isdir(args.load):
        problems.append(f"--load {args.load}: not a directory")
    return problems


def _writable_dir(path: str) -> bool:
    """True if `path` is a writable directory or could be created (its nearest existing parent is)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)

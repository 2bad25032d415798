"""Command-line flags (Megatron-LM's names wherever Megatron has the flag), validated up front.

`parse_args` reports every inconsistency at once, naming the flags at fault, before any process
group is created or any data is read: a ConfigError whose message lists them, values outside their
flag's range (NUMERIC_RANGES) first.

Importing this module and parsing (``--help`` included) import neither torch nor megatron-core, so
that ``pretrain_dwm.py --help`` and a misspelt flag answer at once; checks that need them import
them when they run.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Callable, NoReturn, Sequence

from megatron_dwm.model.presets import PRESETS, LlamaArch, get_preset

MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "kv_channels", "max_position_embeddings", "vocab_size")
LR_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
# megatron_dwm.data.tokenizer.TOKENIZER_TYPES, which imports megatron-core (tests check they agree)
WEIGHTINGS = ("uniform", "domain", "loss", "dwm")  # megatron_dwm.training.policies, DESIGN.md section 9
LOSS_STRATEGIES = ("linupper", "quadratic", "extremes")  # megatron_dwm.training.policies.loss_based_weights
TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer")


class ConfigError(ValueError):
    """An impossible configuration; the message lists every problem found."""


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag: finite numbers from `low` to `high` (None: no bound),
    each end included unless marked open; also +inf where `infinity_ok` (meaning "no bound")."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    infinity_ok: bool = False

    def __contains__(self, value: float) -> bool:
        if self.infinity_ok and value == math.inf:
            return True
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}" + (" (or inf)" if self.infinity_ok else "")
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value: float | None) -> str:
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)


AT_LEAST_0, AT_LEAST_1, POSITIVE = Range(0), Range(1), Range(0, low_open=True)
BETA = Range(0, 1, high_open=True)

# The valid range of every numeric flag, by destination. A flag given several values (nargs) has
# each of them checked; relations between flags are checked after these ranges, in validate_args.
NUMERIC_RANGES: dict[str, Range] = {
    **dict.fromkeys(MODEL_SHAPE_FLAGS, AT_LEAST_1),
    "make_vocab_size_divisible_by": AT_LEAST_1,
    "seq_length": AT_LEAST_1,
    "tensor_model_parallel_size": AT_LEAST_1,
    "pipeline_model_parallel_size": AT_LEAST_1,
    "dwm_ranks": AT_LEAST_0,
    "distributed_timeout_minutes": AT_LEAST_1,
    "micro_batch_size": AT_LEAST_1,
    "global_batch_size": AT_LEAST_1,
    "train_iters": AT_LEAST_1,
    "seed": Range(0, 2**31 - 1),  # numpy seeds stop at 2**32 - 1, and per-rank offsets are added
    "exit_interval": AT_LEAST_1,
    "exit_duration_in_mins": POSITIVE,
    "max_consecutive_nonfinite_iters": AT_LEAST_1,
    "lr": POSITIVE,
    "min_lr": AT_LEAST_0,
    "lr_decay_iters": AT_LEAST_1,
    "lr_warmup_iters": AT_LEAST_0,
    "lr_warmup_init": AT_LEAST_0,
    "lr_wsd_decay_iters": AT_LEAST_1,
    "weight_decay": AT_LEAST_0,
    "clip_grad": AT_LEAST_0,  # 0: no clipping
    "adam_beta1": BETA,
    "adam_beta2": BETA,
    "adam_eps": POSITIVE,
    "domain_weights": AT_LEAST_0,  # not all 0 is checked with the blend
    "loss_weighting_temperature": POSITIVE,
    "loss_weighting_warmup_iters": AT_LEAST_0,
    "dwm_num_layers": AT_LEAST_1,
    "dwm_hidden_size": AT_LEAST_1,
    "dwm_num_attention_heads": AT_LEAST_1,
    "dwm_seq_length": AT_LEAST_1,
    "dwm_temperature": POSITIVE,
    "dwm_weight_clip": Range(0, infinity_ok=True),  # MAX inf: no upper bound; MIN < 1 < MAX is checked
    # with the DWM's other flags
    "dwm_lr": AT_LEAST_0,  # 0: the DWM does not move
    "dwm_valid_batch_size": AT_LEAST_1,
    "dwm_fd_radius": POSITIVE,
    "dwm_stages": AT_LEAST_1,
    "dwm_update_iters": AT_LEAST_0,  # 0: no DWM phase
    "dwm_update_interval": AT_LEAST_1,
    "dwm_exchange_timeout": POSITIVE,
    "num_workers": AT_LEAST_0,
    "save_interval": AT_LEAST_1,
    "ckpt_step": AT_LEAST_0,
    "eval_interval": AT_LEAST_1,
    "eval_iters": AT_LEAST_0,  # 0: no evaluation of the valid split
    "log_interval": AT_LEAST_1,
    "logging_level": AT_LEAST_0,
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, except that an error raises ConfigError instead of printing the usage block (a
    screenful for this parser, which would bury the one line that matters); --help prints it."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


class _HelpFormatter(argparse.HelpFormatter):
    """Ends each flag's help with its default, unless that is None or off, or the help gives it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="pretrain_dwm.py",
        description="Pretrain a Llama-2 model on megatron-core with per-sample data weighting.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
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

    weighting = parser.add_argument_group("sample weighting")
    weighting.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                           help="how each sample of a global batch is weighted in the loss: uniform (Megatron-LM's "
                                "loss), domain (fixed --domain-weights), loss (from the samples' current losses, "
                                "Sow et al., ICLR 2025) or dwm (the data weighting model). Default: dwm; uniform "
                                "with --dwm-disable; domain with --domain-weights")
    weighting.add_argument("--domain-weights", type=float, nargs="+", default=None, metavar="W",
                           help="with --weighting domain: one loss multiplier per training-blend dataset, in "
                                "--data-path order (the loss is sum_i w_i l_i / n; 0 drops a domain)")
    weighting.add_argument("--loss-weighting-strategy", choices=LOSS_STRATEGIES, default="linupper",
                           help="with --weighting loss: down-weight the lowest losses, flat above the midpoint "
                                "(linupper), favour middling losses (quadratic) or both extremes (extremes)")
    weighting.add_argument("--loss-weighting-temperature", type=float, default=1.0,
                           help="with --weighting loss: r in w = n softmax((f - max f) / r); larger is flatter")
    weighting.add_argument("--loss-weighting-warmup-iters", type=int, default=0,
                           help="with --weighting loss: iterations of uniform weights first")

    dwm = parser.add_argument_group("data weighting model (DWM)")
    dwm.add_argument("--dwm-disable", action="store_true",
                     help="uniform weights (the baseline), through the same loss and loop: --weighting uniform")
    dwm.add_argument("--dwm-num-layers", type=int, default=2, help="transformer layers of the DWM's sample encoder")
    dwm.add_argument("--dwm-hidden-size", type=int, default=128, help="hidden size of the DWM")
    dwm.add_argument("--dwm-num-attention-heads", type=int, default=4, help="attention heads of the DWM")
    dwm.add_argument("--dwm-seq-length", type=int, default=128,
                     help="the DWM reads this prefix of each sample (at most --seq-length)")
    dwm.add_argument("--dwm-temperature", type=float, default=1.0, help="tau in w = n softmax(s / tau)")
    dwm.add_argument("--dwm-weight-clip", type=float, nargs=2, metavar=("MIN", "MAX"), default=[0.0, 2.0],
                     help="clip weights to [MIN, MAX], renormalised to mean 1 (default 0 2: no sample counts more "
                          "than twice; 0 inf: no clip)")
    dwm.add_argument("--dwm-lr", type=float, default=1e-3, help="learning rate of the DWM's Adam")
    dwm.add_argument("--dwm-init", default=None,
                     help="initialise the DWM's encoder from a checkpoint of a small LM (this project's format); "
                          "the encoder then has the LM's shape, and --dwm-num-layers, --dwm-hidden-size and "
                          "--dwm-num-attention-heads are not used")
    dwm.add_argument("--dwm-valid-batch-size", type=int, default=None,
                     help="samples of the validation set per DWM update (a multiple of micro batch x DP; "
                          "default: a quarter of the global batch, rounded down to such a multiple)")
    dwm.add_argument("--dwm-fd-radius", type=float, default=0.01, help="r: the finite-difference step is r / ||d||")
    dwm.add_argument("--dwm-fd-direction", default="grad", choices=["adam", "grad"],
                     help="d = P v with Adam's preconditioner P (adam) or P = 1 (grad)")
    dwm.add_argument("--dwm-hypergradient-scaling", default="standardized", choices=["raw", "standardized"],
                     help="what the DWM learns from: the hypergradient as computed (raw), or shifted and "
                          "scaled to mean 0 and standard deviation 1 over the batch (standardized)")
    dwm.add_argument("--dwm-stages", type=int, default=1, help="training stages; each opens with a DWM phase")
    dwm.add_argument("--dwm-update-iters", type=int, default=None,
                     help="length of each stage's DWM phase in iterations (default: the whole stage: the DWM "
                          "learns all along)")
    dwm.add_argument("--dwm-update-interval", type=int, default=4,
                     help="update the DWM every M-th iteration of a DWM phase (default 4: a quarter of the steps "
                          "pay for the outer step)")
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
                            help="checkpoint directory to resume from: its newest checkpoint, which must be "
                                 "complete; a fresh start only if the directory holds no checkpoint at all, or "
                                 "does not exist yet and is also --save (a job that resumes itself)")
    checkpoint.add_argument("--ckpt-step", type=int, default=None,
                            help="resume from this iteration's checkpoint of --load instead of the newest")
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
    """Parse and validate; raise ConfigError with one message listing every problem (--help exits 0)."""
    args = build_parser().parse_args(argv)
    validate_args(args, world_size)
    return args


def model_arch(args: argparse.Namespace) -> LlamaArch:
    """The preset with the explicit shape flags applied."""
    return get_preset(args.model_preset).with_overrides(**{k: getattr(args, k) for k in MODEL_SHAPE_FLAGS})


def validate_args(args: argparse.Namespace, world_size: int | None = None) -> None:
    """Raise ConfigError listing every inconsistency, out-of-range values first; fill in derived
    values (global batch, decay iterations, DWM phase, DWM validation batch).

    A check relating several flags runs only when each of them is in range (`valid`), so an invalid
    value is reported once, by its range, and never breaks a later check."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    out_of_range = range_problems(args)
    problems = list(out_of_range.values())

    def valid(*flags: str) -> bool:
        return not out_of_range.keys() & set(flags)

    if valid(*MODEL_SHAPE_FLAGS, "tensor_model_parallel_size", "pipeline_model_parallel_size", "seq_length"):
        problems += _model_problems(args)
    layout = None
    if valid("tensor_model_parallel_size", "pipeline_model_parallel_size", "dwm_ranks"):
        from megatron_dwm.rank_layout import RankLayout

        layout = RankLayout(world_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                            args.dwm_ranks)
        problems += layout.problems()
        layout = None if layout.problems() else layout
    dp = layout.data_parallel_size if layout is not None and valid("micro_batch_size") else None
    if dp is not None and valid("global_batch_size"):
        if args.global_batch_size is None:
            args.global_batch_size = args.micro_batch_size * dp
        if args.global_batch_size % (args.micro_batch_size * dp):
            problems.append(f"--global-batch-size {args.global_batch_size} is not divisible by "
                            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {dp}")
    else:
        dp = None
    problems += _schedule_problems(args, valid)
    problems += _weighting_problems(args, valid)
    problems += _dwm_problems(args, dp, valid)
    problems += _data_problems(args)
    problems += _output_problems(args)
    from megatron_dwm.platform import validate_platform_options

    problems += validate_platform_options(args.use_distributed_optimizer)
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))


def range_problems(args: argparse.Namespace) -> dict[str, str]:
    """Flag destination -> problem, for each numeric flag whose value lies outside NUMERIC_RANGES
    (NaN and infinities included); flags left unset (None) are not checked."""
    problems = {}
    for flag, valid_range in NUMERIC_RANGES.items():
        value = getattr(args, flag, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if v is not None and v not in valid_range]
        if bad:
            finite = "" if all(math.isfinite(v) for v in bad) else "a finite number "
            problems[flag] = f"--{flag.replace('_', '-')} {' '.join(map(str, values))} must be {finite}{valid_range}"
    return problems


def _model_problems(args: argparse.Namespace) -> list[str]:
    """The model's shape against the parallel layout and the sequence length."""
    try:
        arch = model_arch(args)
    except ValueError as error:
        return [str(error)]
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    problems = []
    if arch.num_attention_heads % tp:
        problems.append(f"--num-attention-heads {arch.num_attention_heads} is not divisible by "
                        f"--tensor-model-parallel-size {tp}")
    if arch.kv_heads % tp:
        problems.append(f"--num-query-groups {arch.kv_heads} is not divisible by --tensor-model-parallel-size {tp}")
    if arch.num_attention_heads % arch.kv_heads:
        problems.append(f"--num-attention-heads {arch.num_attention_heads} is not divisible by "
                        f"--num-query-groups {arch.kv_heads}")
    if arch.num_layers % pp:
        problems.append(f"--num-layers {arch.num_layers} is not divisible by --pipeline-model-parallel-size {pp}")
    if args.seq_length > arch.max_position_embeddings:
        problems.append(f"--seq-length {args.seq_length} exceeds --max-position-embeddings "
                        f"{arch.max_position_embeddings}")
    return problems


def _schedule_problems(args: argparse.Namespace, valid: Callable[..., bool]) -> list[str]:
    """The learning-rate schedule's flags against each other (megatron-core asserts these); fills
    in --lr-decay-iters."""
    problems = []
    if args.lr_decay_iters is None and valid("train_iters"):
        args.lr_decay_iters = args.train_iters
    if valid("lr_warmup_iters", "lr_decay_iters", "train_iters") and args.lr_warmup_iters > 0 \
            and args.lr_warmup_iters >= args.lr_decay_iters:
        problems.append(f"--lr-warmup-iters {args.lr_warmup_iters} must be below --lr-decay-iters "
                        f"{args.lr_decay_iters}")
    if valid("lr", "min_lr") and args.min_lr > args.lr:
        problems.append(f"--min-lr {args.min_lr} exceeds --lr {args.lr}")
    if valid("lr", "lr_warmup_init") and args.lr_warmup_init > args.lr:
        problems.append(f"--lr-warmup-init {args.lr_warmup_init} exceeds --lr {args.lr}")
    if args.lr_decay_style == "WSD" and args.lr_wsd_decay_iters is None:
        problems.append("--lr-decay-style WSD needs --lr-wsd-decay-iters")
    if args.lr_wsd_decay_iters is not None and valid("lr_wsd_decay_iters", "lr_decay_iters", "train_iters") \
            and args.lr_wsd_decay_iters > args.lr_decay_iters:
        problems.append(f"--lr-wsd-decay-iters {args.lr_wsd_decay_iters} exceeds --lr-decay-iters "
                        f"{args.lr_decay_iters} (the decay ends the schedule)")
    return problems


def default_valid_batch_size(args: argparse.Namespace, data_parallel_size: int) -> int:
    """A quarter of the global batch, rounded down to a multiple of micro batch x DP (at least one).

    The outer step's forward+backward on the validation batch is its costliest part after the two
    forward-only passes; a quarter batch keeps a DWM-phase step near 2x a plain one (docs/performance.md)."""
    unit = args.micro_batch_size * data_parallel_size
    return max(unit, args.global_batch_size // 4 // unit * unit)


def _dwm_problems(args: argparse.Namespace, data_parallel_size: int | None, valid: Callable[..., bool]) -> list[str]:
    """The DWM's flags against the others; fills in --dwm-update-iters and --dwm-valid-batch-size."""
    if args.dwm_disable:
        return [f"--dwm-ranks {args.dwm_ranks} reserves ranks for the DWM, which --weighting {args.weighting} "
                "does not use: use --dwm-ranks 0"] if args.dwm_ranks > 0 else []
    problems = _dwm_phase_problems(args, valid)
    if data_parallel_size and valid("dwm_valid_batch_size"):  # else a problem is already reported
        unit = args.micro_batch_size * data_parallel_size
        if args.dwm_valid_batch_size is None:
            args.dwm_valid_batch_size = default_valid_batch_size(args, data_parallel_size)
        elif args.dwm_valid_batch_size % unit:
            problems.append(f"--dwm-valid-batch-size {args.dwm_valid_batch_size} is not a positive multiple of "
                            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {data_parallel_size}")
    updates = valid("dwm_update_iters") and args.dwm_update_iters > 0 and not args.dwm_freeze
    if updates and args.dwm_valid_data_path is None:
        problems.append("updating the DWM needs its validation set: give --dwm-valid-data-path "
                        "(or --dwm-freeze / --dwm-disable)")
    if updates and args.dwm_fd_direction == "adam" and args.use_distributed_optimizer:
        problems.append("--dwm-fd-direction adam reads Adam's state, which --use-distributed-optimizer shards; "
                        "use --dwm-fd-direction grad")
    if valid("dwm_seq_length", "seq_length") and args.dwm_seq_length > args.seq_length:
        problems.append(f"--dwm-seq-length {args.dwm_seq_length} exceeds --seq-length {args.seq_length}")
    if valid("dwm_hidden_size", "dwm_num_attention_heads") and args.dwm_hidden_size % args.dwm_num_attention_heads:
        problems.append(f"--dwm-hidden-size {args.dwm_hidden_size} is not divisible by "
                        f"--dwm-num-attention-heads {args.dwm_num_attention_heads}")
    clip = args.dwm_weight_clip
    if clip is not None and valid("dwm_weight_clip") and not clip[0] < 1 < clip[1]:
        problems.append(f"--dwm-weight-clip {clip[0]} {clip[1]}: need MIN < 1 < MAX (weights have mean 1)")
    for flag in ("dwm_init", "dwm_load"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            problems.append(f"--{flag.replace('_', '-')} {path}: no such checkpoint directory")
    return problems


def _weighting_problems(args: argparse.Namespace, valid: Callable[..., bool]) -> list[str]:
    """The weighting policy against its flags; fills in --weighting and sets ``dwm_disable`` when
    the policy is not the DWM (so every --dwm-* flag is then unused)."""
    problems = []
    implied = "uniform" if args.dwm_disable else "domain" if args.domain_weights is not None else "dwm"
    if args.weighting is None:
        args.weighting = implied
    elif args.dwm_disable and args.weighting != "uniform":
        problems.append(f"--dwm-disable means --weighting uniform, but --weighting {args.weighting} is given: "
                        "keep one of them")
    args.dwm_disable = args.weighting != "dwm"
    if args.weighting == "domain":
        if args.domain_weights is None:
            problems.append("--weighting domain needs --domain-weights (one weight per training-blend dataset)")
        elif valid("domain_weights"):
            count = _train_dataset_count(args)
            if count is not None and len(args.domain_weights) != count:
                problems.append(f"--domain-weights gives {len(args.domain_weights)} weights for {count} training "
                                "datasets: give one per dataset, in --data-path order")
            if not any(args.domain_weights):
                problems.append("--domain-weights are all 0: no sample would count in the loss")
    elif args.domain_weights is not None:
        problems.append(f"--domain-weights applies to --weighting domain, not --weighting {args.weighting}")
    smallest = 3 if args.loss_weighting_strategy in ("quadratic", "extremes") else 2
    if args.weighting == "loss" and valid("micro_batch_size") and args.micro_batch_size < smallest:
        problems.append(f"--weighting loss normalises the weights over each micro batch: --micro-batch-size "
                        f"{args.micro_batch_size} would give every sample weight 1 with --loss-weighting-strategy "
                        f"{args.loss_weighting_strategy}; use --micro-batch-size {smallest} or more")
    return problems


def _train_dataset_count(args: argparse.Namespace) -> int | None:
    """Datasets in the training blend (--data-path, or the per-split file's "train"); None if unreadable
    (reported by the data checks)."""
    data_path = args.data_path
    if data_path is None and args.per_split_data_args_path is not None:
        per_split, _ = _read_per_split(args.per_split_data_args_path)
        data_path = per_split.get("train") if per_split else None
    if not isinstance(data_path, list) or not data_path:
        return None
    return len(_blend_prefixes(data_path))


def _dwm_phase_problems(args: argparse.Namespace, valid: Callable[..., bool]) -> list[str]:
    """Stages and DWM phases against --train-iters; fills in --dwm-update-iters (the whole stage)."""
    stages_valid = valid("dwm_stages", "train_iters")
    stage_length = args.train_iters // args.dwm_stages if stages_valid else 0
    if args.dwm_update_iters is None:
        args.dwm_update_iters = max(stage_length, 1)
    if stages_valid and args.dwm_stages > args.train_iters:
        return [f"--dwm-stages {args.dwm_stages} exceeds --train-iters {args.train_iters}"]
    if stage_length and valid("dwm_update_iters") and args.dwm_update_iters > stage_length:
        return [f"--dwm-update-iters {args.dwm_update_iters} exceeds the stage length {stage_length} "
                f"(--train-iters {args.train_iters} / --dwm-stages {args.dwm_stages})"]
    return []


def _data_problems(args: argparse.Namespace) -> list[str]:
    """Missing or unreadable inputs: data prefixes, split file, tokenizer, LAMBADA-style set."""
    problems = []
    if (args.data_path is None) == (args.per_split_data_args_path is None):
        problems.append("give the training data with exactly one of --data-path and --per-split-data-args-path")
    elif args.data_path is not None:
        problems += _blend_problems("--data-path", args.data_path)
    else:
        problems += _per_split_problems(args.per_split_data_args_path)
    if args.tokenizer_model is None:
        problems.append(f"--tokenizer-type {args.tokenizer_type} needs --tokenizer-model (a .model or tokenizer.json)")
    elif not os.path.exists(args.tokenizer_model):
        problems.append(f"--tokenizer-model {args.tokenizer_model}: no such file")
    else:
        problems += _tokenizer_problems(args.tokenizer_type, args.tokenizer_model)
    if args.dwm_valid_data_path is not None:
        problem = _indexed_problem(args.dwm_valid_data_path, "tools/preprocess_lambada.py")
        problems += [f"--dwm-valid-data-path: {problem}"] if problem else []
    return problems


def _tokenizer_problems(tokenizer_type: str, tokenizer_model: str) -> list[str]:
    """The tokenizer, loaded as the run will load it (a damaged or wrong file fails here, naming the flag)."""
    from megatron_dwm.data.tokenizer import build_tokenizer

    try:
        build_tokenizer(tokenizer_type, tokenizer_model)
    except Exception as error:  # sentencepiece and tokenizers raise anything on a bad file
        first_line = (str(error).strip().splitlines() or [""])[0]
        return [f"--tokenizer-model {tokenizer_model}: cannot be loaded as --tokenizer-type {tokenizer_type} "
                f"({type(error).__name__}: {first_line})"]
    return []


def _read_per_split(path: str) -> tuple[dict | None, str | None]:
    """--per-split-data-args-path's JSON object, or the problem that stops it being read."""
    import json

    flag = f"--per-split-data-args-path {path}"
    if not os.path.isfile(path):
        return None, f"{flag}: no such file"
    try:
        with open(path, encoding="utf-8") as file:
            per_split = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return None, f"{flag}: not readable as JSON ({error})"
    if not isinstance(per_split, dict) or set(per_split) - {"train", "valid", "test"}:
        return None, f'{flag}: expected a JSON object with keys among "train", "valid", "test"'
    return per_split, None


def _per_split_problems(path: str) -> list[str]:
    """--per-split-data-args-path: a readable JSON object of --data-path lists, each checked."""
    per_split, problem = _read_per_split(path)
    if problem:
        return [problem]
    flag = f"--per-split-data-args-path {path}"
    problems = []
    for split, data_path in per_split.items():
        if not isinstance(data_path, list) or not all(isinstance(item, (str, int, float)) for item in data_path):
            problems.append(f"{flag} {split}: expected a list in --data-path syntax")
        elif data_path:
            problems += _blend_problems(f"{flag} {split}", [str(item) for item in data_path])
    return problems


def _blend_prefixes(data_path: list) -> list:
    """The prefixes of a --data-path list: itself if it is one prefix, else every second item."""
    return data_path if len(data_path) == 1 else data_path[1::2]


def _blend_problems(flag: str, data_path: list[str]) -> list[str]:
    if not data_path:
        return [f"{flag} is empty"]
    prefixes = _blend_prefixes(data_path)
    if len(data_path) > 1 and len(data_path) % 2:
        return [f"{flag}: expected weight prefix pairs, got {len(data_path)} values"]
    if len(data_path) > 1:
        try:
            weights = [float(w) for w in data_path[0::2]]
        except ValueError:
            return [f"{flag}: expected weight prefix pairs, found a non-numeric weight in {data_path[0::2]}"]
        if any(w <= 0 for w in weights):
            return [f"{flag}: weights must be positive, got {weights}"]
    return [f"{flag}: {problem}" for prefix in prefixes if (problem := _indexed_problem(prefix))]


def _indexed_problem(prefix: str, tool: str = "tools/preprocess_data.py") -> str | None:
    """A missing file, or a .bin/.idx pair that does not belong together (reads only the header and
    last entries of the .idx, so it is fast on any size of data)."""
    from megatron_dwm.data.integrity import indexed_problem

    return indexed_problem(prefix, tool)


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
    problems += _load_problems(args.load, args.save)
    if args.ckpt_step is not None and args.load is None:
        problems.append(f"--ckpt-step {args.ckpt_step} needs --load")
    return problems


def _load_problems(load: str | None, save: str | None) -> list[str]:
    """--load must name a directory. One that does not exist is a mistyped path, unless it is --save:
    a self-resuming job's first start, which trains from scratch (as an existing, empty directory does)."""
    if load is None or os.path.isdir(load):
        return []
    if os.path.exists(load):
        return [f"--load {load}: not a directory"]
    if save is not None and os.path.abspath(load) == os.path.abspath(save):
        return []
    return [f"--load {load}: no such directory (to start from scratch, leave out --load; a job that resumes "
            "itself gives --load and --save the same directory, which may not exist yet)"]


def _writable_dir(path: str) -> bool:
    """True if `path` is a writable directory or could be created (its nearest existing parent is)."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)

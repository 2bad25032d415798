"""Command-line flags (Megatron-LM's names wherever Megatron has the flag), validated up front.

Megatron-LM's other flags are accepted, ignored or refused by :mod:`megatron_dwm.megatron_flags`.

`parse_args` reports every inconsistency at once, naming the flags at fault, before any process
group is created or any data is read: a ConfigError whose message lists them, values outside their
flag's range (NUMERIC_RANGES) first. The checks live in :mod:`megatron_dwm.config_checks`.

Importing this module and parsing (``--help`` included) import neither torch nor megatron-core, so
that ``pretrain_dwm.py --help`` and a misspelt flag answer at once; checks that need them import
them when they run.
"""

from __future__ import annotations

import argparse
import math
import textwrap
from dataclasses import dataclass
from typing import NoReturn, Sequence

from megatron_dwm.megatron_flags import add_megatron_flags
from megatron_dwm.model.presets import PRESETS, LlamaArch, get_preset

MODEL_SHAPE_FLAGS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                     "num_query_groups", "kv_channels", "max_position_embeddings", "vocab_size")
MODEL_RECIPE_FLAGS = ("rotary_base", "norm_epsilon", "untie_embeddings_and_output_weights")  # the preset's if None
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
# each of them checked; relations between flags are checked after these ranges (config_checks).
NUMERIC_RANGES: dict[str, Range] = {
    **dict.fromkeys(MODEL_SHAPE_FLAGS, AT_LEAST_1),
    "rotary_base": AT_LEAST_1,
    "norm_epsilon": POSITIVE,
    "init_method_std": POSITIVE,
    "make_vocab_size_divisible_by": AT_LEAST_1,
    "seq_length": AT_LEAST_1,
    "tensor_model_parallel_size": AT_LEAST_1,
    "pipeline_model_parallel_size": AT_LEAST_1,
    "context_parallel_size": AT_LEAST_1,
    "num_layers_per_virtual_pipeline_stage": AT_LEAST_1,
    "num_virtual_stages_per_pipeline_rank": AT_LEAST_1,
    "dwm_ranks": AT_LEAST_0,
    "distributed_timeout_minutes": AT_LEAST_1,
    "ddp_bucket_size": AT_LEAST_1,
    "recompute_num_layers": AT_LEAST_1,
    "micro_batch_size": AT_LEAST_1,
    "global_batch_size": AT_LEAST_1,
    "train_iters": AT_LEAST_1,
    "train_samples": AT_LEAST_1,
    "seed": Range(0, 2**31 - 1),  # numpy seeds stop at 2**32 - 1, and per-rank offsets are added
    "exit_interval": AT_LEAST_1,
    "exit_duration_in_mins": POSITIVE,
    "max_consecutive_nonfinite_iters": AT_LEAST_1,
    "lr": POSITIVE,
    "min_lr": AT_LEAST_0,
    "lr_decay_iters": AT_LEAST_1,
    "lr_warmup_iters": AT_LEAST_0,
    "lr_warmup_fraction": Range(0, 1, high_open=True),
    "lr_warmup_init": AT_LEAST_0,
    "lr_wsd_decay_iters": AT_LEAST_1,
    "lr_decay_samples": AT_LEAST_1,
    "lr_warmup_samples": AT_LEAST_0,
    "lr_wsd_decay_samples": AT_LEAST_1,
    "weight_decay": AT_LEAST_0,
    "clip_grad": AT_LEAST_0,  # 0: no clipping
    "adam_beta1": BETA,
    "adam_beta2": BETA,
    "adam_eps": POSITIVE,
    "loss_scale": POSITIVE,
    "initial_loss_scale": POSITIVE,
    "min_loss_scale": POSITIVE,
    "loss_scale_window": AT_LEAST_1,
    "hysteresis": AT_LEAST_1,
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
    """Ends each flag's help with its default, unless that is None or off, or the help gives it;
    wraps lines between words only, never inside a flag's name."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)

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
    model.add_argument("--group-query-attention", action="store_true",
                       help="grouped-query attention with --num-query-groups groups (1 if not given, as Megatron-LM)")
    model.add_argument("--num-query-groups", type=int,
                       help="number of key/value heads (grouped-query attention, with or without "
                            "--group-query-attention); default: the preset's")
    model.add_argument("--kv-channels", type=int, help="head dimension; default hidden size / heads")
    model.add_argument("--max-position-embeddings", type=int, help="longest sequence RoPE is built for")
    model.add_argument("--vocab-size", type=int, help="vocabulary size (default: from the tokenizer)")
    model.add_argument("--rotary-base", type=int, help="RoPE base (default: the preset's, 10000)")
    model.add_argument("--norm-epsilon", type=float, help="RMSNorm epsilon (default: the preset's, 1e-5)")
    model.add_argument("--untie-embeddings-and-output-weights", action="store_true", default=None,
                       help="separate input embedding and output layer (as every preset has them)")
    model.add_argument("--init-method-std", type=float, default=0.02,
                       help="standard deviation of the initial weights")
    model.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                       help="pad the vocabulary to a multiple of this x TP (as Megatron-LM)")
    model.add_argument("--seq-length", type=int, default=256, help="training sequence length")
    model.add_argument("--bf16", action="store_true", help="bf16 parameters and compute (GPU)")
    model.add_argument("--fp16", action="store_true",
                       help="Run model in fp16 mode (fp32 main weights in the optimizer, the loss scaled).")
    model.add_argument("--loss-scale", type=float, default=None,
                       help="Static loss scaling, positive power of 2 values can improve fp16 convergence. If None, "
                            "dynamic loss scaling is used.")
    model.add_argument("--initial-loss-scale", type=float, default=2**32,
                       help="Initial loss-scale for dynamic loss scaling.")
    model.add_argument("--min-loss-scale", type=float, default=1.0, help="Minimum loss scale for dynamic loss scaling.")
    model.add_argument("--loss-scale-window", type=float, default=1000,
                       help="Window over which to raise/lower dynamic scale.")
    model.add_argument("--hysteresis", type=int, default=2, help="hysteresis for dynamic loss scaling")
    model.add_argument("--loss-kernel", default="auto", choices=["auto", "fused", "torch"],
                       help="per-sample weighted cross-entropy: fused Triton kernel, torch reference, "
                            "or auto (fused on GPU when Triton is importable)")

    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument("--tensor-model-parallel-size", type=int, default=1, help="tensor-parallel size (TP)")
    parallel.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="pipeline-parallel size (PP)")
    parallel.add_argument("--context-parallel-size", type=int, default=1,
                          help="context-parallel size (CP): each sample's tokens are split over CP ranks "
                               "(megatron-core's load-balanced split: --seq-length a multiple of 2 x CP); needs "
                               "Transformer Engine's attention (a GPU)")
    parallel.add_argument("--num-layers-per-virtual-pipeline-stage", type=int, default=None,
                          help="megatron-core's interleaved pipeline schedule: the model is cut into chunks "
                               "(virtual stages) of this many layers, dealt out to the PP ranks in turn, each rank "
                               "holding --num-layers / PP / this of them (PP > 1)")
    parallel.add_argument("--num-virtual-stages-per-pipeline-rank", type=int, default=None,
                          help="the interleaved pipeline schedule given by the number of model chunks each PP rank "
                               "holds instead (excludes --num-layers-per-virtual-pipeline-stage)")
    parallel.add_argument("--dwm-ranks", type=int, default=0,
                          help="ranks at the end of the world reserved for the data weighting model "
                               "(0: the DWM runs on the training ranks)")
    parallel.add_argument("--use-distributed-optimizer", action="store_true",
                          help="shard optimizer state over data-parallel ranks (megatron-core's distributed optimizer)")
    parallel.add_argument("--sequence-parallel", action="store_true",
                          help="split the sequence over tensor-parallel ranks where layers are not tensor-parallel "
                               "(norms, dropout); off when --tensor-model-parallel-size is 1")
    parallel.add_argument("--overlap-grad-reduce", action="store_true",
                          help="overlap the data-parallel gradient reduction with the backward pass (DDP buckets)")
    parallel.add_argument("--overlap-param-gather", action="store_true",
                          help="overlap the distributed optimizer's parameter all-gather with the next forward pass "
                               "(needs --use-distributed-optimizer and --overlap-grad-reduce)")
    parallel.add_argument("--ddp-bucket-size", type=int, default=None,
                          help="elements per DDP gradient bucket (default: one bucket, or with "
                               "--overlap-grad-reduce megatron-core's max(40M, 1M x DP))")
    parallel.add_argument("--grad-reduce-in-bf16", action="store_true",
                          help="with --bf16: accumulate and reduce gradients in bf16, not fp32")
    parallel.add_argument("--recompute-activations", action="store_true",
                          help="recompute activations: the same as --recompute-granularity selective")
    parallel.add_argument("--recompute-granularity", choices=["full", "selective"], default=None,
                          help="activation recomputation: full (whole layers; with --recompute-method) or "
                               "selective (the attention's core, whose activations grow with the sequence squared)")
    parallel.add_argument("--recompute-method", choices=["uniform", "block"], default=None,
                          help="with --recompute-granularity full: uniform (every layer, in chunks of "
                               "--recompute-num-layers) or block (the first --recompute-num-layers of each stage)")
    parallel.add_argument("--recompute-num-layers", type=int, default=1,
                          help="layers per recomputed chunk (uniform) or recomputed layers per stage (block)")
    parallel.add_argument("--distributed-timeout-minutes", type=int, default=10,
                          help="timeout of collective operations")

    training = parser.add_argument_group("training")
    training.add_argument("--micro-batch-size", type=int, default=1, help="samples per micro-batch per DP rank")
    training.add_argument("--global-batch-size", type=int, default=None,
                          help="samples per optimizer step over all DP ranks (default: micro batch x DP)")
    training.add_argument("--train-iters", type=int, default=None,
                          help="optimizer steps to run in total (default: 10, or --train-samples / global batch)")
    training.add_argument("--train-samples", type=int, default=None,
                          help="samples to train on instead of --train-iters (as Megatron-LM: the run is "
                               "--train-samples // global batch iterations, and the schedule counts samples)")
    training.add_argument("--seed", type=int, default=1234, help="random seed")
    training.add_argument("--exit-interval", type=int, default=None,
                          help="stop (after a checkpoint, if --save) once the iteration is a multiple of this")
    training.add_argument("--exit-duration-in-mins", type=float, default=None,
                          help="stop (after a checkpoint, if --save) once the run has lasted this long")
    training.add_argument("--exit-signal-handler", action="store_true",
                          help="on SIGTERM or SIGUSR1 (SLURM pre-emption), save a checkpoint and exit 0")
    training.add_argument("--calculate-per-token-loss", action="store_true",
                          help="Scale cross entropy loss by the number of non-padded tokens in the global batch, "
                               "versus the default behavior of assuming all tokens are non-padded (here: the loss "
                               "is sum_i w_i (sum of sample i's token losses) / (the global batch's loss tokens) "
                               "instead of sum_i w_i l_i / n)")
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
    optim.add_argument("--lr-warmup-fraction", type=float, default=None,
                       help="warm up over this fraction of --lr-decay-iters instead (as Megatron-LM)")
    optim.add_argument("--lr-warmup-init", type=float, default=0.0, help="learning rate at the start of warm-up")
    optim.add_argument("--lr-wsd-decay-iters", type=int, default=None,
                       help="iterations of the final decay of the WSD schedule")
    optim.add_argument("--lr-decay-samples", type=int, default=None,
                       help="with --train-samples: samples over which the learning rate decays "
                            "(default: --train-samples)")
    optim.add_argument("--lr-warmup-samples", type=int, default=0, help="with --train-samples: linear warm-up samples")
    optim.add_argument("--lr-wsd-decay-samples", type=int, default=None,
                       help="with --train-samples: samples of the final decay of the WSD schedule")
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
    dwm.add_argument("--dwm-lr", type=float, default=3e-3, help="learning rate of the DWM's Adam")
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
    add_megatron_flags(parser)
    # Megatron-LM's derived value: model chunks per pipeline rank (None: one, the plain schedule), set by
    # validate_args from the two virtual-pipeline flags
    parser.set_defaults(virtual_pipeline_model_parallel_size=None)
    return parser


def parse_args(argv: Sequence[str] | None = None, world_size: int | None = None) -> argparse.Namespace:
    """Parse and validate; raise ConfigError with one message listing every problem (--help exits 0)."""
    from megatron_dwm.config_checks import validate_args  # it imports this module's flags and ranges

    args = build_parser().parse_args(argv)
    validate_args(args, world_size)
    return args


@dataclass(frozen=True)
class ScheduleFlags:
    """The destinations of the flags that set the run's length and learning-rate schedule: with
    --train-samples the --*-samples ones (Megatron-LM's sample-based training), else the --*-iters ones."""

    unit: str  # "samples" or "iters"
    total: str
    warmup: str
    decay: str
    wsd_decay: str


def schedule_flags(args: argparse.Namespace) -> ScheduleFlags:
    unit = "iters" if args.train_samples is None else "samples"
    return ScheduleFlags(unit, f"train_{unit}", f"lr_warmup_{unit}", f"lr_decay_{unit}", f"lr_wsd_decay_{unit}")


def model_arch(args: argparse.Namespace, default_vocab_size: int | None = None) -> LlamaArch:
    """The preset with the explicit model flags applied; `default_vocab_size` (the tokenizer's) is
    the vocabulary where --vocab-size is not given. --group-query-attention without
    --num-query-groups means one group, as in Megatron-LM."""
    preset = get_preset(args.model_preset).with_overrides(vocab_size=default_vocab_size)
    overrides = {k: getattr(args, k, None) for k in (*MODEL_SHAPE_FLAGS, *MODEL_RECIPE_FLAGS)}
    if getattr(args, "group_query_attention", False) and overrides["num_query_groups"] is None:
        overrides["num_query_groups"] = 1
    return preset.with_overrides(**overrides)

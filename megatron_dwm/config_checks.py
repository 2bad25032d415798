"""The checks behind `parse_args`: derived values are filled in first, then every problem is
reported at once in a ConfigError, values outside their flag's range (NUMERIC_RANGES) first.

A check relating several flags runs only when each of them is in range (`valid`), so an invalid
value is reported once, by its range, and never breaks a later check. A check only reports; the
defaults are filled in by `fill_defaults`. Checks that need torch or megatron-core import them when
they run.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable

from megatron_dwm.arguments import (MODEL_RECIPE_FLAGS, MODEL_SHAPE_FLAGS, NUMERIC_RANGES, ConfigError, model_arch,
                                    schedule_flags)
from megatron_dwm.megatron_flags import megatron_flag_problems
from megatron_dwm.path_checks import data_problems, output_problems, train_dataset_count
from megatron_dwm.rank_layout import RankLayout

Valid = Callable[..., bool]  # valid(*flag destinations): all of them in range
DEFAULT_TRAIN_ITERS = 10  # without --train-iters or --train-samples


def validate_args(args: argparse.Namespace, world_size: int | None = None) -> None:
    """Fill in derived values (global batch, decay and warm-up iterations, weighting, DWM phase, DWM
    validation batch), then raise ConfigError listing every inconsistency, out-of-range values first,
    then Megatron-LM flags refused here."""
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    out_of_range = range_problems(args)

    unknown: set[str] = set()  # derived values that could not be derived (their cause is reported)

    def valid(*flags: str) -> bool:
        return not (out_of_range.keys() | unknown) & set(flags)

    layout = _rank_layout(args, world_size, valid)
    dp = _data_parallel_size(layout, valid)
    problems = [*out_of_range.values(), *megatron_flag_problems(args), *_model_problems(args, valid),
                *_scale_feature_problems(args, valid), *_precision_problems(args, valid),
                *_context_parallel_problems(args, valid),
                *(layout.problems() if layout else [])]
    if not fill_virtual_pipeline(args, valid):
        unknown.add("virtual_pipeline_model_parallel_size")
    problems += _virtual_pipeline_problems(args, valid)
    # the flags as given, before filling in
    conflict = [*_weighting_conflict(args), *_warmup_conflict(args), *_run_length_conflicts(args, valid)]
    fill_run_length(args, dp, valid)
    if args.train_iters is None:
        unknown.add("train_iters")
    fill_defaults(args, dp, valid)
    problems += [*_batch_problems(args, dp), *_schedule_problems(args, valid), *conflict,
                 *_weighting_problems(args, valid), *_dwm_problems(args, dp, valid), *data_problems(args),
                 *output_problems(args), *_platform_problems(args)]
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


# --- defaults ----------------------------------------------------------------------------------


def fill_run_length(args: argparse.Namespace, data_parallel_size: int | None, valid: Valid) -> None:
    """The global batch (default: micro batch x DP) and the run's length: --train-iters (default
    DEFAULT_TRAIN_ITERS), or with --train-samples, as Megatron-LM, --train-samples // global batch
    iterations (None when the global batch is unknown, which is reported)."""
    if data_parallel_size is not None and args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * data_parallel_size
    if args.train_samples is None:
        if args.train_iters is None:
            args.train_iters = DEFAULT_TRAIN_ITERS
    elif args.train_iters is None and args.global_batch_size is not None \
            and valid("train_samples", "global_batch_size"):
        args.train_iters = args.train_samples // args.global_batch_size or None


def fill_defaults(args: argparse.Namespace, data_parallel_size: int | None, valid: Valid) -> None:
    """Fill in what was left to derive: decay iterations (or samples), the warm-up from
    --lr-warmup-fraction, the weighting (and ``dwm_disable`` when it is not the DWM, so every --dwm-*
    flag is then unused), the DWM's defaults."""
    flags = schedule_flags(args)
    if getattr(args, flags.decay) is None and valid(flags.total):
        setattr(args, flags.decay, getattr(args, flags.total))
    if args.lr_warmup_fraction is not None and getattr(args, flags.warmup) == 0 \
            and valid("lr_warmup_fraction", flags.decay, flags.total):
        # Megatron-LM's warm-up, exactly: the schedule counts samples, so a fraction of an iteration counts
        setattr(args, flags.warmup, args.lr_warmup_fraction * getattr(args, flags.decay))
    if args.weighting is None:
        args.weighting = "uniform" if args.dwm_disable else "domain" if args.domain_weights is not None else "dwm"
    args.dwm_disable = args.weighting != "dwm"
    if not args.dwm_disable:
        _fill_dwm_defaults(args, data_parallel_size, valid)


def _fill_dwm_defaults(args: argparse.Namespace, data_parallel_size: int | None, valid: Valid) -> None:
    """--dwm-update-iters (the whole stage; 1 where the stage flags are out of range, which is
    reported) and --dwm-valid-batch-size (once the data-parallel size is known)."""
    from megatron_dwm.dwm.schedule import default_update_iters

    if args.dwm_update_iters is None:
        stages_valid = valid("dwm_stages", "train_iters")
        args.dwm_update_iters = default_update_iters(args.train_iters, args.dwm_stages) if stages_valid else 1
    if args.dwm_valid_batch_size is None and data_parallel_size:
        args.dwm_valid_batch_size = default_valid_batch_size(args, data_parallel_size)


def default_valid_batch_size(args: argparse.Namespace, data_parallel_size: int) -> int:
    """A quarter of the global batch, rounded down to a multiple of micro batch x DP (at least one),
    and of PP micro batches per replica under the interleaved pipeline schedule.

    The outer step's forward+backward on the validation batch is its costliest part after the two
    forward-only passes; a quarter batch keeps a DWM-phase step near 2x a plain one (docs/performance.md)."""
    unit = args.micro_batch_size * data_parallel_size * _microbatch_multiple(args)
    return max(unit, args.global_batch_size // 4 // unit * unit)


# --- the model and the parallel layout ---------------------------------------------------------


def _rank_layout(args: argparse.Namespace, world_size: int, valid: Valid) -> RankLayout | None:
    """The split of the world's ranks, or None where its flags are out of range."""
    if not valid("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size", "dwm_ranks"):
        return None
    return RankLayout(world_size, args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                      args.dwm_ranks, args.context_parallel_size)


def _data_parallel_size(layout: RankLayout | None, valid: Valid) -> int | None:
    """The data-parallel size, or None where the layout or the batch flags are invalid (reported)."""
    if layout is None or layout.problems() or not valid("micro_batch_size", "global_batch_size"):
        return None
    return layout.data_parallel_size


def _model_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """The model's shape against the parallel layout and the sequence length."""
    if not valid(*MODEL_SHAPE_FLAGS, *MODEL_RECIPE_FLAGS, "tensor_model_parallel_size", "pipeline_model_parallel_size",
                 "seq_length"):
        return []
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


def _scale_feature_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """Sequence parallelism, activation recomputation and the overlaps, as Megatron-LM checks them."""
    problems = []
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    if args.sequence_parallel and tp > 1 and valid("seq_length", "tensor_model_parallel_size",
                                                   "context_parallel_size") and args.seq_length % (tp * cp):
        split = f" x --context-parallel-size {cp}" if cp > 1 else ""
        problems.append(f"--sequence-parallel splits the sequence over tensor-parallel ranks: --seq-length "
                        f"{args.seq_length} is not divisible by --tensor-model-parallel-size {tp}{split}")
    granularity = "selective" if args.recompute_activations else args.recompute_granularity
    if args.recompute_activations and args.recompute_granularity not in (None, "selective"):
        problems.append(f"--recompute-activations means --recompute-granularity selective, not "
                        f"--recompute-granularity {args.recompute_granularity}")
    if granularity == "full" and args.recompute_method is None:
        problems.append("--recompute-granularity full needs --recompute-method uniform or block")
    if args.recompute_method is not None and granularity != "full":
        problems.append(f"--recompute-method {args.recompute_method} applies to --recompute-granularity full")
    if args.overlap_param_gather and not (args.use_distributed_optimizer and args.overlap_grad_reduce):
        problems.append("--overlap-param-gather needs --use-distributed-optimizer and --overlap-grad-reduce")
    return problems


def _precision_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """--bf16 against --fp16 (as in Megatron-LM, one of them), and the dynamic loss scaler's bounds
    (megatron-core asserts them)."""
    problems = []
    if args.fp16 and args.bf16:
        problems.append("--fp16 and --bf16 exclude each other: keep one of them")
    if args.fp16 and args.loss_scale is None and valid("min_loss_scale", "initial_loss_scale") \
            and args.min_loss_scale > args.initial_loss_scale:
        problems.append(f"--min-loss-scale {args.min_loss_scale} exceeds --initial-loss-scale "
                        f"{args.initial_loss_scale}")
    return problems


def _context_parallel_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """Context parallelism against the sequence, the masks and the loss kernel (megatron-core's
    load-balanced split, Transformer Engine's causal context-parallel attention)."""
    cp = args.context_parallel_size
    if not valid("context_parallel_size") or cp == 1:
        return []
    problems = []
    if valid("seq_length") and args.seq_length % (2 * cp):
        problems.append(f"--context-parallel-size {cp} splits each sequence into 2 x {cp} = {2 * cp} equal chunks "
                        f"(megatron-core's load-balanced split): --seq-length {args.seq_length} is not divisible "
                        f"by {2 * cp}")
    if args.reset_attention_mask:
        problems.append(f"--reset-attention-mask builds explicit attention masks, which the context-parallel "
                        f"attention (causal only) does not take: not with --context-parallel-size {cp}")
    if args.loss_kernel == "fused":
        problems.append(f"--loss-kernel fused reduces each sample's tokens on one rank: not with "
                        f"--context-parallel-size {cp} (use --loss-kernel torch or auto)")
    if args.calculate_per_token_loss:
        problems.append(f"--calculate-per-token-loss counts each sample's loss tokens on one rank: not with "
                        f"--context-parallel-size {cp} yet")
    return problems


def _batch_problems(args: argparse.Namespace, data_parallel_size: int | None) -> list[str]:
    """The global batch against micro batch x data-parallel size (and the interleaved schedule)."""
    if data_parallel_size is None:
        return []
    if args.global_batch_size % (args.micro_batch_size * data_parallel_size):
        return [f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
                f"{args.micro_batch_size} x data-parallel size {data_parallel_size}"]
    return _interleaved_microbatch_problems(args, "--global-batch-size", args.global_batch_size, data_parallel_size)


# --- the interleaved (virtual) pipeline schedule ------------------------------------------------


def _stage_layers(args: argparse.Namespace, valid: Valid) -> int | None:
    """The layers of one pipeline stage, or None where the model or PP is invalid (reported)."""
    if not valid(*MODEL_SHAPE_FLAGS, "pipeline_model_parallel_size"):
        return None
    try:
        layers = model_arch(args).num_layers
    except ValueError:
        return None
    pp = args.pipeline_model_parallel_size
    return None if layers % pp else layers // pp


def fill_virtual_pipeline(args: argparse.Namespace, valid: Valid) -> bool:
    """Megatron-LM's ``virtual_pipeline_model_parallel_size``: the model chunks each pipeline rank
    holds, --num-virtual-stages-per-pipeline-rank or the layers of a stage over
    --num-layers-per-virtual-pipeline-stage; None for one chunk (the plain schedule), as Megatron-LM.
    Returns whether it is known (otherwise its cause is reported)."""
    per_chunk, chunks = args.num_layers_per_virtual_pipeline_stage, args.num_virtual_stages_per_pipeline_rank
    args.virtual_pipeline_model_parallel_size = None
    if per_chunk is not None and chunks is not None:
        return False
    if chunks is not None:
        if not valid("num_virtual_stages_per_pipeline_rank"):
            return False
    elif per_chunk is not None:
        stage_layers = _stage_layers(args, valid)
        if stage_layers is None or not valid("num_layers_per_virtual_pipeline_stage") or stage_layers % per_chunk:
            return False
        chunks = stage_layers // per_chunk
    if chunks is not None and chunks > 1:
        args.virtual_pipeline_model_parallel_size = chunks
    return True


def _virtual_pipeline_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """The virtual-pipeline flags against each other, the model and PP (Megatron-LM's and
    megatron-core's own conditions)."""
    per_chunk, chunks = args.num_layers_per_virtual_pipeline_stage, args.num_virtual_stages_per_pipeline_rank
    if per_chunk is not None and chunks is not None:
        return [f"--num-layers-per-virtual-pipeline-stage {per_chunk} and --num-virtual-stages-per-pipeline-rank "
                f"{chunks} both set the virtual pipeline: keep one of them"]
    flag, value = (("--num-layers-per-virtual-pipeline-stage", per_chunk) if per_chunk is not None
                   else ("--num-virtual-stages-per-pipeline-rank", chunks))
    if value is None or not valid(flag[2:].replace("-", "_")):
        return []
    problems = []
    stage_layers = _stage_layers(args, valid)
    if stage_layers is not None and stage_layers % value:
        split = "are not a multiple of it" if per_chunk is not None else f"do not split into {value} equal model chunks"
        problems.append(f"{flag} {value}: the {stage_layers} layers of each pipeline stage (--num-layers "
                        f"{stage_layers * args.pipeline_model_parallel_size} / --pipeline-model-parallel-size "
                        f"{args.pipeline_model_parallel_size}) {split}")
    if args.virtual_pipeline_model_parallel_size and args.pipeline_model_parallel_size == 1:
        problems.append(f"{flag} {value}: the interleaved pipeline schedule needs --pipeline-model-parallel-size > 1")
    return problems


def _microbatch_multiple(args: argparse.Namespace) -> int:
    """What the number of micro batches of a DP replica's batch must be a multiple of: PP under the
    interleaved schedule (megatron-core runs each model chunk on groups of PP micro batches), else 1.
    Called once the layout is valid."""
    return args.pipeline_model_parallel_size if args.virtual_pipeline_model_parallel_size else 1


def _interleaved_microbatch_problems(args: argparse.Namespace, flag: str, samples: int,
                                     data_parallel_size: int) -> list[str]:
    """`samples` (given by `flag`, whole micro batches per DP replica) against the interleaved schedule."""
    multiple = _microbatch_multiple(args)
    microbatches = samples // (args.micro_batch_size * data_parallel_size)
    if microbatches % multiple == 0:
        return []
    batches = f"{microbatches} micro batch{'' if microbatches == 1 else 'es'}"
    return [f"{flag} {samples} makes {batches} per data-parallel replica (--micro-batch-size {args.micro_batch_size} "
            f"x data-parallel size {data_parallel_size}); the interleaved pipeline schedule needs a multiple of "
            f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}"]


def _platform_problems(args: argparse.Namespace) -> list[str]:
    """Options the current platform cannot honour."""
    from megatron_dwm.platform import validate_platform_options

    return validate_platform_options(args.context_parallel_size)


# --- learning-rate schedule, weighting and DWM --------------------------------------------------


def _run_length_conflicts(args: argparse.Namespace, valid: Valid) -> list[str]:
    """Iteration-based against sample-based flags (as given, each in range; Megatron-LM takes one kind)."""
    if args.train_samples is not None and args.train_iters is not None:
        return [f"--train-iters {args.train_iters} and --train-samples {args.train_samples} both set the run's "
                "length: keep one of them"] if valid("train_iters", "train_samples") else []
    given, other = ("samples", "iters") if args.train_samples is not None else ("iters", "samples")
    mixed = [f"--lr-{what}-{other}" for what in ("decay", "warmup", "wsd-decay")
             if getattr(args, f"lr_{what.replace('-', '_')}_{other}") not in (None, 0)
             and valid(f"lr_{what.replace('-', '_')}_{other}")]
    return [f"{flag} is for {'sample' if other == 'samples' else 'iteration'}-based training; with "
            f"--train-{given} give {flag.replace(other, given)}" for flag in mixed]


def _schedule_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """The learning-rate schedule's flags against each other (megatron-core asserts these)."""
    problems = []
    flags = schedule_flags(args)
    total, warmup, decay, wsd = flags.total, flags.warmup, flags.decay, flags.wsd_decay

    def flag(dest: str) -> str:
        return f"--{dest.replace('_', '-')} {getattr(args, dest)}"

    if args.train_samples is not None and args.global_batch_size is not None and valid("train_samples") \
            and args.train_samples < args.global_batch_size:
        problems.append(f"{flag('train_samples')} is less than one global batch ({args.global_batch_size})")
    if valid(warmup, decay, total) and getattr(args, warmup) > 0 and getattr(args, warmup) >= getattr(args, decay):
        problems.append(f"{flag(warmup)} must be below {flag(decay)}")
    if valid("lr", "min_lr") and args.min_lr > args.lr:
        problems.append(f"--min-lr {args.min_lr} exceeds --lr {args.lr}")
    if valid("lr", "lr_warmup_init") and args.lr_warmup_init > args.lr:
        problems.append(f"--lr-warmup-init {args.lr_warmup_init} exceeds --lr {args.lr}")
    if args.lr_decay_style == "WSD" and getattr(args, wsd) is None:
        problems.append(f"--lr-decay-style WSD needs --{wsd.replace('_', '-')}")
    if getattr(args, wsd) is not None and valid(wsd, decay, total) and getattr(args, wsd) > getattr(args, decay):
        problems.append(f"{flag(wsd)} exceeds {flag(decay)} (the decay ends the schedule)")
    return problems


def _weighting_conflict(args: argparse.Namespace) -> list[str]:
    """--dwm-disable against an explicit --weighting other than uniform (the flags as given)."""
    if not args.dwm_disable or args.weighting in (None, "uniform"):
        return []
    return [f"--dwm-disable means --weighting uniform, but --weighting {args.weighting} is given: "
            "keep one of them"]


def _warmup_conflict(args: argparse.Namespace) -> list[str]:
    """--lr-warmup-fraction against --lr-warmup-iters or -samples (as given; Megatron-LM takes one)."""
    flags = schedule_flags(args)
    warmup = getattr(args, flags.warmup)
    if args.lr_warmup_fraction is None or warmup == 0:
        return []
    return [f"--lr-warmup-fraction {args.lr_warmup_fraction} and --lr-warmup-{flags.unit} {warmup} both set "
            "the warm-up: keep one of them"]


def _weighting_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """The weighting policy against its flags."""
    problems = []
    if args.weighting == "domain":
        if args.domain_weights is None:
            problems.append("--weighting domain needs --domain-weights (one weight per training-blend dataset)")
        elif valid("domain_weights"):
            count = train_dataset_count(args)
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


def _dwm_problems(args: argparse.Namespace, data_parallel_size: int | None, valid: Valid) -> list[str]:
    """The DWM's flags against the others."""
    if args.dwm_disable:
        return [f"--dwm-ranks {args.dwm_ranks} reserves ranks for the DWM, which --weighting {args.weighting} "
                "does not use: use --dwm-ranks 0"] if args.dwm_ranks > 0 else []
    problems = _dwm_phase_problems(args, valid)
    if data_parallel_size and valid("dwm_valid_batch_size"):
        if args.dwm_valid_batch_size % (args.micro_batch_size * data_parallel_size):
            problems.append(f"--dwm-valid-batch-size {args.dwm_valid_batch_size} is not a positive multiple of "
                            f"--micro-batch-size {args.micro_batch_size} x data-parallel size {data_parallel_size}")
        else:
            problems += _interleaved_microbatch_problems(args, "--dwm-valid-batch-size", args.dwm_valid_batch_size,
                                                         data_parallel_size)
    updates = valid("dwm_update_iters") and args.dwm_update_iters > 0 and not args.dwm_freeze
    if updates and args.dwm_valid_data_path is None:
        problems.append("updating the DWM needs its validation set: give --dwm-valid-data-path "
                        "(or --dwm-freeze / --dwm-disable)")
    if valid("dwm_seq_length", "seq_length") and args.dwm_seq_length > args.seq_length:
        problems.append(f"--dwm-seq-length {args.dwm_seq_length} exceeds --seq-length {args.seq_length}")
    if valid("dwm_hidden_size", "dwm_num_attention_heads") and args.dwm_hidden_size % args.dwm_num_attention_heads:
        problems.append(f"--dwm-hidden-size {args.dwm_hidden_size} is not divisible by "
                        f"--dwm-num-attention-heads {args.dwm_num_attention_heads}")
    problems += _weight_clip_problems(args, valid)
    for flag in ("dwm_init", "dwm_load"):
        path = getattr(args, flag)
        if path is not None and not os.path.isdir(path):
            problems.append(f"--{flag.replace('_', '-')} {path}: no such checkpoint directory")
    return problems


def _dwm_phase_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """Stages and DWM phases against --train-iters, by the stage schedule's own rule."""
    from megatron_dwm.dwm.schedule import phase_problem, stages_problem

    if not valid("dwm_stages", "train_iters"):
        return []
    problem = stages_problem(args.train_iters, args.dwm_stages)
    if problem is None and valid("dwm_update_iters"):
        problem = phase_problem(args.train_iters, args.dwm_stages, args.dwm_update_iters)
    return [problem] if problem else []


def _weight_clip_problems(args: argparse.Namespace, valid: Valid) -> list[str]:
    """--dwm-weight-clip must leave room around weight 1 (the DWM's own rule; MAX may be inf)."""
    from megatron_dwm.dwm.model import DWMConfig

    clip = args.dwm_weight_clip
    if clip is None or not valid("dwm_weight_clip") or DWMConfig.clip_leaves_room(*clip):
        return []
    return [f"--dwm-weight-clip {clip[0]} {clip[1]}: need MIN < 1 < MAX (weights have mean 1)"]

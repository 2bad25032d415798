"""Wrap the model and build its optimizer with megatron-core."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import DistributedOptimizer, MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.grad_scaler import DynamicGradScaler

from megatron_dwm.arguments import model_arch
from megatron_dwm.data import build_tokenizer
from megatron_dwm.data.tokenizer import TextTokenizer
from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.model.provider import padded_vocab_size


def llm_arch(args) -> tuple[TextTokenizer, LlamaArch, int]:
    """The run's tokenizer, its Llama architecture (vocabulary from --vocab-size or the tokenizer) and its
    padded vocabulary: the one builder of all three, for the training ranks and the DWM ranks alike."""
    tokenizer = build_tokenizer(args.tokenizer_type, args.tokenizer_model)
    arch = model_arch(args, default_vocab_size=tokenizer.vocab_size)
    padded = padded_vocab_size(arch.vocab_size, args.tensor_model_parallel_size, args.make_vocab_size_divisible_by)
    return tokenizer, arch, padded


def model_chunks(model) -> list:
    """A rank's model chunks: `model` if it is their list (one per virtual pipeline stage under the
    interleaved schedule, as Megatron-LM holds them), else the one chunk `model`, listed."""
    return list(model) if isinstance(model, (list, tuple)) else [model]


def wrap_ddp(model, use_distributed_optimizer: bool = False, overlap_grad_reduce: bool = False,
             overlap_param_gather: bool = False, grad_reduce_in_fp32: bool = True,
             bucket_size: int | None = None, disable_bucketing: bool = False) -> DistributedDataParallel:
    """megatron-core DDP around one model chunk (by default: gradients reduced in fp32, one bucket, no overlap)."""
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=grad_reduce_in_fp32,
                                               overlap_grad_reduce=overlap_grad_reduce,
                                               overlap_param_gather=overlap_param_gather,
                                               use_distributed_optimizer=use_distributed_optimizer,
                                               bucket_size=bucket_size)
    return DistributedDataParallel(model.config, ddp_config, model, disable_bucketing=disable_bucketing)


def wrap_ddp_chunks(chunks: list, **options) -> list:
    """DDP around each of a rank's model chunks (wrap_ddp's `options`), bucketing the first only, as
    Megatron-LM's ``get_model``."""
    return [wrap_ddp(chunk, disable_bucketing=index > 0, **options) for index, chunk in enumerate(chunks)]


def ddp_options(args) -> dict:
    """wrap_ddp's options from Megatron-LM's flags (--grad-reduce-in-bf16 acts under --bf16 only, as there)."""
    return dict(use_distributed_optimizer=args.use_distributed_optimizer, overlap_grad_reduce=args.overlap_grad_reduce,
                overlap_param_gather=args.overlap_param_gather, bucket_size=args.ddp_bucket_size,
                grad_reduce_in_fp32=not (args.bf16 and args.grad_reduce_in_bf16))


def transformer_options(args) -> dict:
    """llama_transformer_config's sequence-parallel and activation-recomputation options from Megatron-LM's flags
    (--recompute-activations is --recompute-granularity selective; the layer count is full recomputation's)."""
    granularity = "selective" if args.recompute_activations else args.recompute_granularity
    options = dict(sequence_parallel=args.sequence_parallel, recompute_granularity=granularity)
    if granularity == "full":
        options.update(recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers)
    return options


def enable_overlaps(config, chunks: list) -> None:
    """Let megatron-core's pipeline schedule drive DDP's overlapped gradient reduction, as Megatron-LM does:
    no reduction between micro batches, each bucket's started as soon as its last gradient is ready
    (one function per model chunk, or the function itself for one chunk)."""
    if chunks[0].ddp_config.overlap_grad_reduce:
        no_sync, grad_sync = [chunk.no_sync for chunk in chunks], [chunk.start_grad_sync for chunk in chunks]
        config.no_sync_func = no_sync[0] if len(chunks) == 1 else no_sync
        config.grad_sync_func = grad_sync[0] if len(chunks) == 1 else grad_sync


@dataclass(frozen=True)
class LossScaling:
    """How megatron-core's fp16 optimizer scales the loss: by a constant `loss_scale`, or (None) by its
    DynamicGradScaler, which starts at `initial_loss_scale`, halves after `hysteresis` overflows (not
    below `min_loss_scale`) and doubles after `loss_scale_window` steps without one. Megatron-LM's
    flags and defaults, and megatron-core's OptimizerConfig fields, of the same names."""

    loss_scale: float | None = None
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0
    loss_scale_window: float = 1000
    hysteresis: int = 2

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LossScaling":
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})


def build_optimizer(ddp_model, lr: float, weight_decay: float = 0.01, clip_grad: float = 1.0,
                    bf16: bool = False, use_distributed_optimizer: bool = False, min_lr: float = 0.0,
                    adam_beta1: float = 0.9, adam_beta2: float = 0.999, adam_eps: float = 1e-8,
                    fp16: bool = False, loss_scaling: LossScaling = LossScaling()) -> MegatronOptimizer:
    """megatron-core's Adam over the DDP-wrapped model chunk `ddp_model` or list of chunks (mixed
    precision with fp32 master weights when bf16 or fp16; fp16 scales the loss as `loss_scaling` says)."""
    config = OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=weight_decay, clip_grad=clip_grad,
                             bf16=bf16, fp16=fp16, use_distributed_optimizer=use_distributed_optimizer,
                             adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_eps=adam_eps, **asdict(loss_scaling))
    return get_megatron_optimizer(config, model_chunks(ddp_model))


def distributed_optimizer(optimizer: MegatronOptimizer) -> DistributedOptimizer | None:
    """megatron-core's DistributedOptimizer within `optimizer` (megatron-core chains its optimizers;
    with --use-distributed-optimizer this project's chain holds one), or None."""
    return next((member for member in getattr(optimizer, "chained_optimizers", [optimizer])
                 if isinstance(member, DistributedOptimizer)), None)


def dynamic_loss_scaler(optimizer: MegatronOptimizer) -> DynamicGradScaler | None:
    """megatron-core's DynamicGradScaler of `optimizer` (--fp16 without --loss-scale), or None."""
    members = getattr(optimizer, "chained_optimizers", [optimizer])
    return next((member.grad_scaler for member in members
                 if isinstance(getattr(member, "grad_scaler", None), DynamicGradScaler)), None)

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


def wrap_ddp(model, config=None, use_distributed_optimizer: bool = False):
    """megatron-core DDP around one model chunk (gradients reduced in fp32, no overlap)."""
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=use_distributed_optimizer)
    return DistributedDataParallel(model.config if config is None else config, ddp_config, model)


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
    """megatron-core's Adam (mixed precision with fp32 master weights when bf16 or fp16; fp16 scales
    the loss as `loss_scaling` says)."""
    config = OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=weight_decay, clip_grad=clip_grad,
                             bf16=bf16, fp16=fp16, use_distributed_optimizer=use_distributed_optimizer,
                             adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_eps=adam_eps, **asdict(loss_scaling))
    return get_megatron_optimizer(config, [ddp_model])


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

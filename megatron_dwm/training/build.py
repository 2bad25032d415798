"""Wrap the model and build its optimizer with megatron-core."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import DistributedOptimizer, MegatronOptimizer, OptimizerConfig, get_megatron_optimizer

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


def wrap_ddp(model, config=None, use_distributed_optimizer: bool = False, disable_bucketing: bool = False):
    """megatron-core DDP around one model chunk (gradients reduced in fp32, no overlap)."""
    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=use_distributed_optimizer)
    return DistributedDataParallel(model.config if config is None else config, ddp_config, model,
                                   disable_bucketing=disable_bucketing)


def wrap_ddp_chunks(chunks: list, use_distributed_optimizer: bool = False) -> list:
    """DDP around each of a rank's model chunks, bucketing the first only, as Megatron-LM's ``get_model``."""
    return [wrap_ddp(chunk, use_distributed_optimizer=use_distributed_optimizer, disable_bucketing=index > 0)
            for index, chunk in enumerate(chunks)]


def build_optimizer(ddp_model, lr: float, weight_decay: float = 0.01, clip_grad: float = 1.0,
                    bf16: bool = False, use_distributed_optimizer: bool = False, min_lr: float = 0.0,
                    adam_beta1: float = 0.9, adam_beta2: float = 0.999, adam_eps: float = 1e-8) -> MegatronOptimizer:
    """megatron-core's Adam (mixed precision with fp32 master weights when bf16) over the DDP-wrapped
    model chunk `ddp_model` or list of chunks."""
    config = OptimizerConfig(optimizer="adam", lr=lr, min_lr=min_lr, weight_decay=weight_decay, clip_grad=clip_grad,
                             bf16=bf16, use_distributed_optimizer=use_distributed_optimizer,
                             adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_eps=adam_eps)
    return get_megatron_optimizer(config, model_chunks(ddp_model))


def distributed_optimizer(optimizer: MegatronOptimizer) -> DistributedOptimizer | None:
    """megatron-core's DistributedOptimizer within `optimizer` (megatron-core chains its optimizers;
    with --use-distributed-optimizer this project's chain holds one), or None."""
    return next((member for member in getattr(optimizer, "chained_optimizers", [optimizer])
                 if isinstance(member, DistributedOptimizer)), None)

"""Build a Llama-2 model from megatron-core's GPTModel.

Why GPTModel and not HybridModel: for an attention-plus-MLP decoder GPTModel is megatron-core's
direct fit. It has both layer specs this project needs (Transformer Engine on GPU, the pure
megatron-core "local" spec on CPU), the vocab-parallel `labels=` loss path, and the parameter
layout of Megatron-LM's Llama checkpoints, so users' converters and checkpoints keep working.
HybridModel would express the same network through a layer-pattern string with a different
module layout, for no gain on a dense Llama.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.platform import get_platform


def padded_vocab_size(vocab_size: int, tensor_parallel_size: int, divisible_by: int = 128) -> int:
    """Megatron-LM's padding: the vocabulary rounded up to a multiple of divisible_by x TP."""
    multiple = divisible_by * tensor_parallel_size
    return -(-vocab_size // multiple) * multiple


def llama_transformer_config(
    arch: LlamaArch,
    *,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    virtual_pipeline_model_parallel_size: int | None = None,
    context_parallel_size: int = 1,
    sequence_parallel: bool = False,
    bf16: bool = False,
    fp16: bool = False,
    use_cpu_initialization: bool = False,
    init_method_std: float = 0.02,
    fused_kernels: bool | None = None,
    **overrides: object,
) -> TransformerConfig:
    """TransformerConfig for a Llama-2 decoder (RMSNorm, SwiGLU, RoPE, no biases, no dropout).

    ``bf16`` or ``fp16``: parameters and compute in that half precision (Megatron-LM's --bf16, --fp16).
    ``fused_kernels`` defaults to whether the platform uses Transformer Engine.
    ``virtual_pipeline_model_parallel_size``: model chunks per pipeline rank (megatron-core's
    interleaved schedule), whose point-to-point transfers overlap computation as Megatron-LM's do
    by default (``overlap_p2p_comm``, unbatched). ``context_parallel_size`` > 1: each sample's tokens
    are split over that many ranks, their attention exchanging keys and values as Megatron-LM's default
    ``--cp-comm-type p2p`` (Transformer Engine's ring attention; megatron-core has no other).
    """
    if fused_kernels is None:
        fused_kernels = get_platform().use_transformer_engine
    params_dtype = half_precision_dtype(bf16, fp16) or torch.float32
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=init_method_std,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        cp_comm_type="p2p" if context_parallel_size > 1 else None,
        overlap_p2p_comm=virtual_pipeline_model_parallel_size is not None,
        batch_p2p_comm=virtual_pipeline_model_parallel_size is None,
        sequence_parallel=sequence_parallel and tensor_model_parallel_size > 1,
        bf16=bf16,
        fp16=fp16,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        use_cpu_initialization=use_cpu_initialization,
        bias_activation_fusion=fused_kernels,
        bias_dropout_fusion=fused_kernels,
        masked_softmax_fusion=fused_kernels,
        apply_rope_fusion=fused_kernels,
        persist_layer_norm=fused_kernels,
        gradient_accumulation_fusion=fused_kernels,
        **overrides,
    )


def half_precision_dtype(bf16: bool, fp16: bool) -> torch.dtype | None:
    """The parameters' dtype under --bf16 or --fp16 (None: fp32)."""
    if bf16 and fp16:
        raise ValueError("bf16 and fp16 exclude each other")
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else None


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """torch's RMSNorm (what megatron-core's local spec builds), its weight marked ``sequence_parallel``.

    Under sequence parallelism each tensor-parallel rank normalises its own part of the sequence, so
    the norm's weight gets a partial gradient on each; megatron-core's ``finalize_model_grads`` sums
    the gradients of the parameters so marked over the tensor-parallel group (its Apex and Transformer
    Engine norms mark theirs the same way). megatron-core's torch norm refuses sequence parallelism
    only for want of this mark. Same parameters and checkpoint keys as the unmarked norm.
    """

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_: object) -> None:
        super().__init__(hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel


def llama_layer_spec(use_transformer_engine: bool | None = None, config: TransformerConfig | None = None,
                     vp_stage: int | None = None) -> ModuleSpec:
    """Transformer Engine's layer spec where the platform uses TE (default), megatron-core's local spec otherwise.

    With ``config.sequence_parallel`` the local spec becomes a block spec (this stage's layers and the final
    norm, for `vp_stage`) whose norms are :class:`SequenceParallelRMSNorm`.
    """
    if use_transformer_engine is None:
        use_transformer_engine = get_platform().use_transformer_engine
    if use_transformer_engine:
        return get_gpt_layer_with_transformer_engine_spec()
    layer = get_gpt_layer_local_spec(normalization="RMSNorm")
    if config is None or not config.sequence_parallel:
        return layer
    layer = ModuleSpec(module=layer.module, submodules=dataclasses.replace(
        layer.submodules, input_layernorm=SequenceParallelRMSNorm, pre_mlp_layernorm=SequenceParallelRMSNorm))
    layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=parallel_state.get_pipeline_model_parallel_rank())
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(
        layer_specs=[layer] * layers, layer_norm=SequenceParallelRMSNorm))


def build_llama_model(
    arch: LlamaArch,
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    *,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    pg_collection: ProcessGroupCollection | None = None,
    vp_stage: int | None = None,
) -> GPTModel:
    """This rank's pipeline stage of the Llama model (`vocab_size` already padded).

    `pre_process`/`post_process` default to whether this rank holds the first/last stage. With
    `config.bf16` (`config.fp16`) every parameter is bf16 (fp16), as Megatron-LM's Float16Module makes
    it (megatron-core's local norms are created in fp32; its mixed-precision optimizer checkpoints
    half-precision parameters only).
    """
    if pre_process is None:
        pre_process = parallel_state.is_pipeline_first_stage()
    if post_process is None:
        post_process = parallel_state.is_pipeline_last_stage()
    model = GPTModel(
        config=config,
        transformer_layer_spec=llama_layer_spec(config=config, vp_stage=vp_stage),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        pre_process=pre_process,
        post_process=post_process,
        parallel_output=True,
        share_embeddings_and_output_weights=not arch.untie_embeddings_and_output_weights,
        position_embedding_type="rope",
        rotary_base=int(arch.rotary_base),
        pg_collection=pg_collection,
        vp_stage=vp_stage,
    )
    half = half_precision_dtype(config.bf16, config.fp16)
    return model.to(half) if half is not None else model


def build_llama_model_chunks(
    arch: LlamaArch,
    config: TransformerConfig,
    vocab_size: int,
    max_sequence_length: int,
    *,
    pg_collection: ProcessGroupCollection | None = None,
) -> list[GPTModel]:
    """This rank's model chunks, as Megatron-LM's ``get_model`` builds them: one per virtual pipeline
    stage (``config.virtual_pipeline_model_parallel_size``, None: one chunk, the rank's whole stage).
    Chunk ``i`` takes the embedding only on the first pipeline stage's chunk 0, the output layer only
    on the last stage's last chunk."""
    chunks = config.virtual_pipeline_model_parallel_size
    if chunks is None or config.pipeline_model_parallel_size == 1:
        return [build_llama_model(arch, config, vocab_size, max_sequence_length, pg_collection=pg_collection)]
    return [build_llama_model(arch, config, vocab_size, max_sequence_length, pg_collection=pg_collection,
                              pre_process=parallel_state.is_pipeline_first_stage() and stage == 0,
                              post_process=parallel_state.is_pipeline_last_stage() and stage == chunks - 1,
                              vp_stage=stage)
            for stage in range(chunks)]

"""Hugging Face Llama <-> megatron-core GPTModel tensors (full, unsharded state dicts).

Megatron-core keeps Q, K and V in one `linear_qkv` weight, grouped per KV head:
``[q_0 .. q_{h/g-1}, k, v]`` for each of the g query groups; and SwiGLU's gate and up
projections in one `linear_fc1` weight, ``[gate; up]``. Both use the same rotate-half RoPE
convention as Hugging Face Llama, so Q and K need no permutation.
"""

from __future__ import annotations

from typing import Any

import torch

from megatron_dwm.model.presets import LlamaArch

Tensors = dict[str, torch.Tensor]


def arch_from_hf_config(config: dict[str, Any]) -> LlamaArch:
    """LlamaArch from a Hugging Face `config.json` of a Llama model."""
    if config.get("model_type", "llama") != "llama":
        raise ValueError(f"expected a Llama config.json, got model_type={config.get('model_type')!r}")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise ValueError(f"RoPE scaling {scaling!r} is not supported by the converter")
    heads = config["num_attention_heads"]
    return LlamaArch(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads,
        num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or config["hidden_size"] // heads,
        max_position_embeddings=config.get("max_position_embeddings", 4096),
        norm_epsilon=float(config.get("rms_norm_eps", 1e-5)),
        rotary_base=float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        untie_embeddings_and_output_weights=not config.get("tie_word_embeddings", False),
        vocab_size=config["vocab_size"],
    )


def hf_config_from_arch(arch: LlamaArch, vocab_size: int, torch_dtype: str = "float32",
                        special_tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """A Hugging Face `config.json` (LlamaForCausalLM) describing `arch`."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.ffn_hidden_size,
        "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.kv_heads,
        "head_dim": arch.head_dim,
        "num_hidden_layers": arch.num_layers,
        "max_position_embeddings": arch.max_position_embeddings,
        "rms_norm_eps": arch.norm_epsilon,
        "rope_theta": arch.rotary_base,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": not arch.untie_embeddings_and_output_weights,
        "vocab_size": vocab_size,
        "torch_dtype": torch_dtype,
        **(special_tokens or {}),
    }


def _pad_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    if weight.shape[0] > rows:
        raise ValueError(f"vocabulary of {weight.shape[0]} rows does not fit the model's {rows}")
    padded = weight.new_zeros((rows, *weight.shape[1:]))
    padded[: weight.shape[0]] = weight
    return padded


def hf_to_megatron(hf: Tensors, arch: LlamaArch, padded_vocab_size: int) -> Tensors:
    """Megatron-core (TP=1, PP=1) state dict from a Hugging Face Llama state dict."""
    groups, d = arch.kv_heads, arch.head_dim
    per_group = arch.num_attention_heads // groups
    out: Tensors = {"embedding.word_embeddings.weight": _pad_rows(hf["model.embed_tokens.weight"], padded_vocab_size)}
    for i in range(arch.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        q = hf[src + "self_attn.q_proj.weight"].view(groups, per_group * d, -1)
        k = hf[src + "self_attn.k_proj.weight"].view(groups, d, -1)
        v = hf[src + "self_attn.v_proj.weight"].view(groups, d, -1)
        out[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, q.shape[-1])
        out[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        out[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        out[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        out[dst + "mlp.linear_fc1.weight"] = torch.cat(
            [hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]], dim=0)
        out[dst + "mlp.linear_fc2.weight"] = hf[src + "mlp.down_proj.weight"]
    out["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    if arch.untie_embeddings_and_output_weights:
        out["output_layer.weight"] = _pad_rows(hf["lm_head.weight"], padded_vocab_size)
    return out


def megatron_to_hf(mc: Tensors, arch: LlamaArch, vocab_size: int) -> Tensors:
    """Hugging Face Llama state dict from a megatron-core (TP=1, PP=1) state dict."""
    groups, d = arch.kv_heads, arch.head_dim
    per_group = arch.num_attention_heads // groups
    out: Tensors = {"model.embed_tokens.weight": mc["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(arch.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = mc[src + "self_attention.linear_qkv.weight"]
        qkv = qkv.view(groups, (per_group + 2) * d, -1)
        q, k, v = qkv.split([per_group * d, d, d], dim=1)
        out[dst + "self_attn.q_proj.weight"] = q.reshape(-1, qkv.shape[-1])
        out[dst + "self_attn.k_proj.weight"] = k.reshape(-1, qkv.shape[-1])
        out[dst + "self_attn.v_proj.weight"] = v.reshape(-1, qkv.shape[-1])
        out[dst + "self_attn.o_proj.weight"] = mc[src + "self_attention.linear_proj.weight"]
        out[dst + "input_layernorm.weight"] = mc[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = mc[src + "pre_mlp_layernorm.weight"]
        gate, up = mc[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = mc[src + "mlp.linear_fc2.weight"]
    out["model.norm.weight"] = mc["decoder.final_layernorm.weight"]
    if arch.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = mc["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}

"""Model FLOPs per training step and model FLOPs utilisation (MFU), Megatron-LM's convention.

The count is the one of `num_floating_point_operations` in Megatron-LM's
`megatron/training/training.py` for a dense Llama (GQA attention, SwiGLU MLP, untied output
layer), written for `LlamaArch` so it needs no Megatron `args`.
"""

from __future__ import annotations

from megatron_dwm.model.presets import LlamaArch

# Dense (no structured sparsity) peak FLOP/s per GPU, from NVIDIA's datasheets: (bf16, fp32).
# The bf16 figure is the tensor-core rate (fp16's too on each of these GPUs). The fp32 figure is
# the plain CUDA-core rate, not TF32: PyTorch runs fp32 matmuls without TF32 unless `allow_tf32`
# is switched on.
# Matched by substring of `torch.cuda.get_device_name()`, first match wins, so the more
# specific names come first (GH200 before H200, H100/H200 NVL and H100 PCIe before H100).
_PEAK_FLOPS: tuple[tuple[str, float, float], ...] = (
    ("GH200", 989.4e12, 67e12),
    ("H200 NVL", 835e12, 60e12),
    ("H200", 989.4e12, 67e12),
    ("H100 NVL", 835e12, 60e12),
    ("H100 PCIe", 756e12, 51e12),
    ("H100", 989.4e12, 67e12),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("H800", 989.4e12, 67e12),
    ("B200", 2.25e15, 80e12),
    ("A100", 312e12, 19.5e12),
    ("A800", 312e12, 19.5e12),
    ("L40S", 362e12, 91.6e12),
)


def num_floating_point_operations(arch: LlamaArch, padded_vocab_size: int, seq_length: int,
                                  batch_size: int) -> float:
    """Model FLOPs of one training step (forward + backward) over `batch_size` x `seq_length` tokens.

    Counts only the matmuls, at 2 FLOPs per multiply-add, and takes the backward pass as twice
    the forward (data and weight gradients), so a step is 3x the forward. Per layer: the Q, K, V
    projections (K and V with `kv_heads` heads of `head_dim`), the attention output projection,
    the three `hidden x ffn` SwiGLU matrices and the core attention (QK^T and softmax x V);
    then the logits over `padded_vocab_size`. Norms, RoPE, activations, softmax and the
    embedding lookup are not counted.

    Core attention is halved for the causal mask, as Megatron-LM does: it counts
    `2 * seq^2 * heads * head_dim` forward FLOPs per sequence and layer, half of what the dense
    QK^T and softmax x V matmuls actually execute. Activation recomputation is not counted.
    """
    h = arch.hidden_size
    query = arch.num_attention_heads * arch.head_dim
    key_value = arch.kv_heads * arch.head_dim
    fwd_bwd, fma = 3, 2
    per_token_per_layer = h * (query + 2 * key_value) + query * h + 3 * h * arch.ffn_hidden_size
    tokens = batch_size * seq_length
    token_linear = fwd_bwd * fma * tokens * (arch.num_layers * per_token_per_layer + h * padded_vocab_size)
    # QK^T and softmax x V: two matmuls of seq^2 x query multiply-adds each, halved by the mask.
    core_attention = fwd_bwd * fma * batch_size * seq_length**2 * arch.num_layers * query * 2 // 2
    return float(token_linear + core_attention)


def peak_flops_per_device(device_name: str, half_precision: bool) -> float | None:
    """Dense peak FLOP/s of one GPU named `device_name` (bf16 or fp16 tensor cores, or plain fp32).

    None for an unknown device or a CPU.
    """
    for key, bf16_peak, fp32_peak in _PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return bf16_peak if half_precision else fp32_peak
    return None


def model_flops_utilization(flops_per_step: float, step_seconds: float, num_devices: int,
                            peak: float | None) -> float | None:
    """Achieved model FLOP/s per device over `peak` (a fraction, 0.4 = 40%); None if unknowable."""
    if peak is None or peak <= 0 or step_seconds <= 0 or num_devices <= 0:
        return None
    return flops_per_step / (step_seconds * num_devices * peak)

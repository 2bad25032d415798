"""The FLOPs formula against what the model executes (torch's FLOP counter), against Megatron-LM's
own `num_floating_point_operations`, and against the well-known 6 * params * tokens figure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from megatron_dwm.model.presets import LlamaArch, get_preset
from megatron_dwm.training.flops import (
    model_flops_utilization,
    num_floating_point_operations,
    peak_flops_per_device,
)
from tests.distributed import run_distributed

VOCAB = 256
# (arch overrides, seq_length, batch_size): GQA, MHA with a head dim that is not hidden/heads.
CASES = [
    (dict(), 64, 2),
    (dict(num_query_groups=None, kv_channels=24), 48, 3),
]


def _arch(overrides: dict) -> LlamaArch:
    from dataclasses import replace

    return replace(get_preset("tiny"), vocab_size=VOCAB, **overrides)


def _count_flops(rank, world_size, cases):
    """Per case: FLOPs of matmuls (aten.mm) and of attention (bmm/baddbmm), forward and forward+backward;
    None where the platform uses Transformer Engine."""
    from torch.utils.flop_counter import FlopCounterMode

    from megatron.core import parallel_state
    from megatron_dwm.platform import get_platform
    from tests.megatron_model import build_on_rank

    if get_platform().use_transformer_engine:
        return None
    results = []
    for overrides, seq, batch in cases:
        model = build_on_rank(_arch(overrides), VOCAB, seq_length=seq)
        tokens = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(0))
        positions = torch.arange(seq).unsqueeze(0).expand_as(tokens)
        counts = {}
        for mode in ("fwd", "fwd_bwd"):
            with FlopCounterMode(display=False) as counter:
                logits = model(tokens, positions, None)
                if mode == "fwd_bwd":
                    logits.float().square().mean().backward()
            by_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
            counts[mode] = {"linear": by_op.pop("aten.mm", 0),
                            "attention": by_op.pop("aten.bmm", 0) + by_op.pop("aten.baddbmm", 0),
                            "other": sum(by_op.values())}
        results.append(counts)
        parallel_state.destroy_model_parallel()
    return results


@pytest.fixture(scope="module")
def counted():
    results = run_distributed(_count_flops, world_size=1, args=(CASES,))[0]
    if results is None:
        pytest.skip("the FLOP counter cannot see inside Transformer Engine's kernels; needs the local spec")
    return results


@pytest.mark.parametrize("case", range(len(CASES)))
def test_formula_matches_flop_counter(counted, case):
    overrides, seq, batch = CASES[case]
    arch = _arch(overrides)
    fwd, step = counted[case]["fwd"], counted[case]["fwd_bwd"]
    assert fwd["other"] == step["other"] == 0
    # The backward pass costs twice the forward, matmul by matmul.
    assert step["linear"] == 3 * fwd["linear"]
    assert step["attention"] == 3 * fwd["attention"]
    # The local spec's attention multiplies the full seq x seq score matrix (QK^T, then x V).
    per_layer = 2 * (2 * batch * arch.num_attention_heads * seq * seq * arch.head_dim)
    dense_attention_fwd = arch.num_layers * per_layer
    assert fwd["attention"] == dense_attention_fwd
    # Megatron-LM's convention counts half of it (causal mask); everything else is exact.
    formula = num_floating_point_operations(arch, VOCAB, seq, batch)
    assert formula == step["linear"] + step["attention"] / 2


def _megatron_args(arch: LlamaArch, padded_vocab: int, seq: int) -> SimpleNamespace:
    return SimpleNamespace(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, kv_channels=arch.head_dim,
        group_query_attention=arch.num_query_groups is not None, num_query_groups=arch.num_query_groups,
        swiglu=True, padded_vocab_size=padded_vocab, seq_length=seq, num_experts=None,
        mtp_num_layers=None, multi_latent_attention=False, attention_output_gate=False,
        experimental_attention_variant=None, hybrid_layer_pattern=None,
        moe_ffn_hidden_size=None, moe_latent_size=None, moe_shared_expert_intermediate_size=None,
    )


@pytest.mark.parametrize("preset,overrides", [
    ("tiny", {}), ("llama2-370m", {}), ("llama2-1.3b", {}), ("llama2-7b", {}),
    ("llama2-7b", dict(num_query_groups=8)), ("tiny", dict(kv_channels=40)),
])
def test_formula_equals_megatron_lm(preset, overrides):
    from megatron.training.training import num_floating_point_operations as megatron_flops

    arch = get_preset(preset).with_overrides(**overrides)
    for seq, batch in [(128, 1), (4096, 8)]:
        expected = megatron_flops(_megatron_args(arch, 32000, seq), batch)
        assert num_floating_point_operations(arch, 32000, seq, batch) == pytest.approx(expected, rel=1e-12)


def test_llama2_7b_is_six_params_per_token():
    arch = get_preset("llama2-7b")
    seq, batch = 4096, 2
    tokens = seq * batch
    params = 6_738_415_616  # Llama-2-7B's published parameter count (embedding and output untied)
    # 6 N T plus causal attention: 3 (fwd+bwd) x 2 (FMA) x seq x hidden per token and layer.
    attention = 6 * arch.num_layers * seq * arch.hidden_size * tokens
    reference = 6 * params * tokens + attention
    flops = num_floating_point_operations(arch, 32000, seq, batch)
    # The embedding lookup (vocab x hidden = 2% of N) and the norms cost no matmul FLOPs.
    assert flops < reference
    assert flops == pytest.approx(reference, rel=0.03)
    assert flops == pytest.approx(reference - 6 * 32000 * arch.hidden_size * tokens, rel=1e-4)
    # Attention is ~7% of a 7B step at seq 4096: dropping it or counting it dense would show.
    assert flops - attention == pytest.approx(6 * params * tokens, rel=0.03)
    assert flops / tokens == pytest.approx(42.9e9, rel=0.01)  # ~43 GFLOP per token


@pytest.mark.parametrize("name,bf16,expected", [
    ("NVIDIA H100 80GB HBM3", True, 989.4e12),
    ("NVIDIA H100 PCIe", True, 756e12),
    ("NVIDIA H100 NVL", True, 835e12),
    ("NVIDIA H200", True, 989.4e12),
    ("NVIDIA GH200 480GB", True, 989.4e12),
    ("NVIDIA A100-SXM4-80GB", True, 312e12),
    ("NVIDIA L40S", True, 362e12),
    ("NVIDIA B200", True, 2.25e15),
    ("NVIDIA H100 80GB HBM3", False, 67e12),
    ("NVIDIA A100-SXM4-40GB", False, 19.5e12),
    ("cpu", True, None),
    ("NVIDIA GeForce GTX 1080", True, None),
])
def test_peak_flops(name, bf16, expected):
    assert peak_flops_per_device(name, bf16) == expected


def test_model_flops_utilization():
    assert model_flops_utilization(4e15, 2.0, 8, 500e12) == pytest.approx(0.5)
    assert model_flops_utilization(4e15, 2.0, 8, None) is None
    assert model_flops_utilization(4e15, 0.0, 8, 500e12) is None

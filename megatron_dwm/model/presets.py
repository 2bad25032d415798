"""Llama-2 architecture presets (sizes only; everything else is the Llama-2 recipe)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LlamaArch:
    """The shape of a Llama-style decoder. Defaults are Llama-2's choices."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int | None = None  # None: multi-head attention (as many KV heads as heads)
    kv_channels: int | None = None  # head dim; None: hidden_size / num_attention_heads
    max_position_embeddings: int = 4096
    norm_epsilon: float = 1e-5
    rotary_base: float = 10000.0
    untie_embeddings_and_output_weights: bool = True
    vocab_size: int | None = None  # None: taken from the tokenizer

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads

    def with_overrides(self, **overrides: object) -> "LlamaArch":
        """A copy with the non-None `overrides` applied (command-line flags win over the preset)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, LlamaArch] = {
    # A few-hundred-thousand-parameter model for CPU tests and smoke runs.
    "tiny": LlamaArch(num_layers=4, hidden_size=64, ffn_hidden_size=176, num_attention_heads=4,
                      num_query_groups=2, max_position_embeddings=512),
    # About 12M parameters with the demo's 8k vocabulary: the larger model of the CPU transfer
    # experiment (bench/efficacy.py), still trainable on a laptop.
    "small": LlamaArch(num_layers=6, hidden_size=320, ffn_hidden_size=864, num_attention_heads=5,
                       max_position_embeddings=512),
    # The paper's small model (about 370M parameters with a 32k vocabulary).
    "llama2-370m": LlamaArch(num_layers=24, hidden_size=1024, ffn_hidden_size=2736,
                             num_attention_heads=16),
    # The paper's transfer target (about 1.3B parameters with a 32k vocabulary).
    "llama2-1.3b": LlamaArch(num_layers=24, hidden_size=2048, ffn_hidden_size=5504,
                             num_attention_heads=16),
    # Llama-2-7B exactly.
    "llama2-7b": LlamaArch(num_layers=32, hidden_size=4096, ffn_hidden_size=11008,
                           num_attention_heads=32, vocab_size=32000),
}


def get_preset(name: str) -> LlamaArch:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown --model-preset {name!r}; choose one of: {', '.join(PRESETS)}") from None

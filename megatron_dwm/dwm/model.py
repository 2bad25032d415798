"""The Data Weighting Model (DWM): one weight per sample of a global batch (DESIGN.md section 3).

::

    tokens [n, s] --encode--> sample vectors [n, d] --score(progress)--> scores [n] --> weights [n]

- **Sample encoder**: token embedding, `num_layers` Llama decoder blocks (RMSNorm, causal
  self-attention with RoPE and grouped-query heads, SwiGLU) and a final RMSNorm, mean-pooled over
  the first `seq_length` positions. Its parameters are named like Hugging Face Llama's, so an LM
  checkpoint of this project maps onto it through `hf_conversion` (`load_encoder_from_checkpoint`).
- **Batch mixer**: one self-attention layer over the set of sample vectors of the whole global
  batch, without positions, so it is permutation-equivariant and a sample's score can depend on
  the rest of the batch. Pre-norm with a residual, then an output norm.
- **Progress input**: training progress t/T is concatenated to every mixed vector before a small
  SiLU MLP. (A scalar added straight into a linear score would shift every score equally and
  cancel in the softmax; through the MLP it can change the ranking.)
- **Score head**: the MLP's last linear layer, zero-initialised (weight and bias), so an untrained
  DWM scores every sample 0 and gives exactly uniform weights: the run starts as the baseline.
- **Weights**: `w = n * softmax(s / temperature)` (mean exactly 1), then optionally clipped to
  `[lo, hi]` and rescaled to mean 1 (`clip_and_renormalise`).

The module is plain PyTorch with no model parallelism: the DWM is small and replicated, and
computes in fp32. The all-gather of sample vectors over data-parallel ranks is the caller's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from megatron_dwm.checkpoint_layout import latest_checkpoint_dir, read_checkpoint_common
from megatron_dwm.model.hf_conversion import megatron_to_hf
from megatron_dwm.model.presets import LlamaArch

# Bisection steps (in log space) that locate the clipped sets in `clip_and_renormalise`.
_CLIP_BISECTION_STEPS = 64


def llama_ffn_hidden_size(hidden_size: int, multiple_of: int = 64) -> int:
    """Llama's SwiGLU width: 2/3 of 4 x hidden, rounded up to a multiple of `multiple_of`.

    Llama rounds to 256; 64 is the default here so that small DWMs stay small (hidden 128 -> 384).
    """
    return multiple_of * math.ceil(int(8 * hidden_size / 3) / multiple_of)


@dataclass(frozen=True)
class DWMConfig:
    """Shape and weighting rule of a DWM. `None` fields are resolved on construction.

    The encoder's fields mirror `LlamaArch`, so a config can match a small LM's checkpoint
    (`dwm_config_from_checkpoint`). The batch mixer uses `num_attention_heads` heads of
    `hidden_size / num_attention_heads` channels each.
    """

    vocab_size: int
    num_layers: int = 2
    hidden_size: int = 128
    num_attention_heads: int = 4
    num_query_groups: int | None = None  # None: as many KV heads as heads
    kv_channels: int | None = None  # head dim of the encoder; None: hidden_size / num_attention_heads
    ffn_hidden_size: int | None = None  # None: llama_ffn_hidden_size(hidden_size)
    seq_length: int = 128  # the DWM reads only this prefix of each sample
    temperature: float = 1.0  # tau in w = n * softmax(s / tau)
    weight_clip: tuple[float, float] | None = None  # (lo, hi) with 0 <= lo < 1 < hi < inf
    norm_epsilon: float = 1e-5
    rotary_base: float = 10000.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: fill the defaults once, here
        if self.num_query_groups is None:
            set_(self, "num_query_groups", self.num_attention_heads)
        if self.kv_channels is None:
            set_(self, "kv_channels", self.hidden_size // self.num_attention_heads)
        if self.ffn_hidden_size is None:
            set_(self, "ffn_hidden_size", llama_ffn_hidden_size(self.hidden_size))
        if self.weight_clip is not None:
            set_(self, "weight_clip", (float(self.weight_clip[0]), float(self.weight_clip[1])))
        problems = []
        if self.num_attention_heads % self.num_query_groups:
            problems.append(f"num_attention_heads ({self.num_attention_heads}) is not divisible by "
                            f"num_query_groups ({self.num_query_groups})")
        if self.hidden_size % self.num_attention_heads:
            problems.append(f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                            f"({self.num_attention_heads})")
        if self.vocab_size < 1 or self.seq_length < 1 or self.num_layers < 0:
            problems.append("vocab_size and seq_length must be >= 1, num_layers >= 0")
        if not self.temperature > 0:
            problems.append(f"temperature ({self.temperature}) must be > 0")
        if self.weight_clip is not None:
            lo, hi = self.weight_clip
            if not (0 <= lo and self.clip_leaves_room(lo, hi) and hi < math.inf):
                problems.append(f"weight_clip {self.weight_clip} must satisfy 0 <= lo < 1 < hi < inf (room around 1)")
        if problems:
            raise ValueError("invalid DWMConfig: " + "; ".join(problems))

    @staticmethod
    def clip_leaves_room(lo: float, hi: float) -> bool:
        """Whether clipping weights of mean 1 to [lo, hi] leaves room around weight 1: lo < 1 < hi."""
        return lo < 1 < hi


# --- building blocks ---------------------------------------------------------------------------


def rotary_tables(seq_length: int, head_dim: int, base: float, device: torch.device):
    """cos, sin [seq_length, head_dim] of rotate-half RoPE (Llama's and megatron-core's convention)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    freqs = torch.outer(torch.arange(seq_length, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat([freqs, freqs], dim=-1)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on x [batch, heads, seq, head_dim]."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class SelfAttention(nn.Module):
    """Multi-head self-attention with grouped-query heads and no biases (Llama's)."""

    def __init__(self, hidden_size: int, heads: int, query_groups: int, head_dim: int):
        super().__init__()
        self.heads, self.groups, self.head_dim = heads, query_groups, head_dim
        self.q_proj = nn.Linear(hidden_size, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, query_groups * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, query_groups * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                causal: bool = False) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim).transpose(1, 2)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        # KV head g serves query heads g * heads/groups .. (g + 1) * heads/groups - 1.
        k = k.repeat_interleave(self.heads // self.groups, dim=1)
        v = v.repeat_interleave(self.heads // self.groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, ffn_hidden_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, ffn_hidden_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, ffn_hidden_size, bias=False)
        self.down_proj = nn.Linear(ffn_hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """A pre-norm Llama block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: DWMConfig):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.norm_epsilon)
        self.self_attn = SelfAttention(config.hidden_size, config.num_attention_heads,
                                       config.num_query_groups, config.kv_channels)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.norm_epsilon)
        self.mlp = SwiGLU(config.hidden_size, config.ffn_hidden_size)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rotary, causal=True)
        return x + self.mlp(self.post_attention_layernorm(x))


class SampleEncoder(nn.Module):
    """A small Llama without its output layer; parameter names follow Hugging Face's `model.*`."""

    def __init__(self, config: DWMConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_epsilon)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [n, s] -> final hidden states [n, s, hidden] (after the final norm)."""
        c = self.config
        rotary = rotary_tables(tokens.shape[1], c.kv_channels, c.rotary_base, tokens.device)
        x = self.embed_tokens(tokens).float()
        for layer in self.layers:
            x = layer(x, rotary)
        return self.norm(x)


class BatchMixer(nn.Module):
    """One self-attention layer over the set of sample vectors (no positions, no mask)."""

    def __init__(self, config: DWMConfig):
        super().__init__()
        d, heads = config.hidden_size, config.num_attention_heads
        self.input_norm = nn.RMSNorm(d, eps=config.norm_epsilon)
        self.attention = SelfAttention(d, heads, heads, d // heads)
        self.output_norm = nn.RMSNorm(d, eps=config.norm_epsilon)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [N, d] -> [N, d]: the N samples form one unordered set."""
        mixed = self.attention(self.input_norm(vectors).unsqueeze(0)).squeeze(0)
        return self.output_norm(vectors + mixed)


class ScoreHead(nn.Module):
    """score = out(silu(hidden([x, progress]))), with `out` zero-initialised."""

    def __init__(self, config: DWMConfig):
        super().__init__()
        d = config.hidden_size
        self.hidden = nn.Linear(d + 1, d)
        self.out = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
        features = torch.cat([x, progress.expand(x.shape[0], 1)], dim=-1)
        return self.out(F.silu(self.hidden(features))).squeeze(-1)


# --- the model ---------------------------------------------------------------------------------


class DataWeightingModel(nn.Module):
    """tokens of a global batch + training progress -> one weight per sample, of mean 1.

    Parameter groups: `encoder` (SampleEncoder), `mixer` (BatchMixer), `head` (ScoreHead).
    """

    def __init__(self, config: DWMConfig, init_method_std: float = 0.02):
        super().__init__()
        self.config = config
        self.encoder = SampleEncoder(config)
        self.mixer = BatchMixer(config)
        self.head = ScoreHead(config)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=init_method_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.zeros_(self.head.out.weight)  # an untrained DWM gives exactly uniform weights

    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [n, s] -> encoder hidden states [n, min(s, seq_length), hidden] after the final norm."""
        return self.encoder(tokens[:, : self.config.seq_length])

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [n, s] int64 -> sample vectors [n, hidden] (fp32): hidden states mean-pooled over
        the first `seq_length` positions (Megatron samples are packed, so there is no padding)."""
        return self.hidden_states(tokens).mean(dim=1)

    def score(self, vectors: torch.Tensor, progress: float | torch.Tensor) -> torch.Tensor:
        """vectors [N, hidden] of the WHOLE global batch, progress t/T in [0, 1] -> scores [N]."""
        progress = torch.as_tensor(progress, dtype=torch.float32, device=vectors.device).reshape(1, 1)
        return self.head(self.mixer(vectors.float()), progress)

    def weights_from_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [N] -> weights [N] = N * softmax(scores / temperature), then optionally clipped
        (`clip_and_renormalise`). Mean 1; differentiable."""
        weights = scores.shape[0] * torch.softmax(scores.float() / self.config.temperature, dim=0)
        if self.config.weight_clip is not None:
            weights = clip_and_renormalise(weights, *self.config.weight_clip)
        return weights

    def forward(self, tokens: torch.Tensor, progress: float | torch.Tensor) -> torch.Tensor:
        """tokens [N, s] of the whole global batch -> weights [N]."""
        return self.weights_from_scores(self.score(self.encode(tokens), progress))


def clip_and_renormalise(weights: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Weights of mean 1 -> `clamp(c * weights, lo, hi)` with the scale c > 0 that keeps the mean 1.

    A clip followed by a plain rescale would leave values outside [lo, hi]; instead the clipped sets
    are located by bisection on c (mean(clamp(c w, lo, hi)) grows with c; no gradient), and c is then
    solved exactly, with gradient, from the unclipped weights:
    ``c = (N - lo * #low - hi * #high) / sum(unclipped w)``. The result lies in [lo, hi] and has
    mean 1 up to float rounding (an unclipped weight within rounding of a bound may pass it by
    about 1e-6 relative). Needs 0 <= lo <= 1 <= hi.
    """
    n = weights.shape[0]
    if lo == hi:  # only lo = hi = 1 is feasible
        return weights * 0 + 1
    with torch.no_grad():
        w = weights.double()
        # mean(clamp(c w)) is <= 1 at c_lo (everything at lo, or no weight raised) and >= 1 at c_hi.
        c_lo = (lo / w.max()).log() if lo > 0 else w.new_zeros(())
        c_hi = (hi / w.min().clamp_min(1e-300)).log()
        for _ in range(_CLIP_BISECTION_STEPS):
            c = (c_lo + c_hi) / 2
            too_big = (c.exp() * w).clamp(lo, hi).mean() > 1
            c_lo, c_hi = torch.where(too_big, c_lo, c), torch.where(too_big, c, c_hi)
        scaled = ((c_lo + c_hi) / 2).exp() * w
        low, high = scaled <= lo, scaled >= hi
    unclipped = weights.masked_fill(low | high, 0).sum()
    c = (n - lo * low.sum() - hi * high.sum()) / unclipped.clamp_min(torch.finfo(weights.dtype).tiny)
    return torch.where(low, lo, torch.where(high, hi, c * weights))


def safe_weights(weights: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(weights, True) if they are all finite with a positive sum, else (all ones, False): a bad
    DWM output falls back to uniform weights for that step. Synchronises with the device."""
    ok = bool((torch.isfinite(weights).all() & (weights.sum() > 0)).item())
    return (weights, True) if ok else (torch.ones_like(weights), False)


# --- initialising the encoder from an LM checkpoint --------------------------------------------

# megatron-core keys in a distributed checkpoint (Transformer Engine names; the local spec maps its
# norms onto them). Decoder-layer tensors are stored stacked: [num_layers, ...], global layer order.
_EMBEDDING = "embedding.word_embeddings.weight"
_FINAL_NORM = "decoder.final_layernorm.weight"
_STACKED_LAYER_KEYS = {  # megatron-core TP=1 state-dict name within a layer -> stored stacked key
    "input_layernorm.weight": "decoder.layers.self_attention.linear_qkv.layer_norm_weight",
    "self_attention.linear_qkv.weight": "decoder.layers.self_attention.linear_qkv.weight",
    "self_attention.linear_proj.weight": "decoder.layers.self_attention.linear_proj.weight",
    "pre_mlp_layernorm.weight": "decoder.layers.mlp.linear_fc1.layer_norm_weight",
    "mlp.linear_fc1.weight": "decoder.layers.mlp.linear_fc1.weight",
    "mlp.linear_fc2.weight": "decoder.layers.mlp.linear_fc2.weight",
}


def _checkpoint_arch(checkpoint_root: str | os.PathLike) -> tuple[LlamaArch, int]:
    common = read_checkpoint_common(checkpoint_root)
    return LlamaArch(**common["arch"]), int(common["padded_vocab_size"])


def dwm_config_from_checkpoint(checkpoint_root: str | os.PathLike, **overrides: object) -> DWMConfig:
    """A DWMConfig whose encoder matches the LM checkpoint under `checkpoint_root` (vocab_size: the
    checkpoint's padded vocabulary); `overrides` set the other fields (seq_length, temperature, ...)."""
    arch, padded_vocab = _checkpoint_arch(checkpoint_root)
    fields = dict(vocab_size=padded_vocab, num_layers=arch.num_layers, hidden_size=arch.hidden_size,
                  num_attention_heads=arch.num_attention_heads, num_query_groups=arch.kv_heads,
                  kv_channels=arch.head_dim, ffn_hidden_size=arch.ffn_hidden_size,
                  norm_epsilon=arch.norm_epsilon, rotary_base=arch.rotary_base)
    return DWMConfig(**{**fields, **overrides})


def _check_matches(config: DWMConfig, arch: LlamaArch, padded_vocab: int, where: str) -> None:
    expected = {"num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
                "num_attention_heads": arch.num_attention_heads, "num_query_groups": arch.kv_heads,
                "kv_channels": arch.head_dim, "ffn_hidden_size": arch.ffn_hidden_size,
                "norm_epsilon": arch.norm_epsilon, "rotary_base": arch.rotary_base}
    for field, value in expected.items():
        if getattr(config, field) != value:
            raise ValueError(f"{where}: {field} is {value} in the checkpoint but {getattr(config, field)} "
                             "in the DWM config (see dwm_config_from_checkpoint)")
    tokenizer_vocab = arch.vocab_size or 1
    if not tokenizer_vocab <= config.vocab_size <= padded_vocab:
        raise ValueError(f"{where}: vocab_size {config.vocab_size} of the DWM config must lie between the "
                         f"checkpoint's tokenizer vocabulary ({arch.vocab_size}) and its padded vocabulary "
                         f"({padded_vocab})")


def read_full_tensors(checkpoint_dir: str | os.PathLike, keys: list[str]) -> dict[str, torch.Tensor]:
    """Whole (unsharded) tensors `keys` of a megatron-core distributed checkpoint directory, read in
    this process alone (no collective, no model, no parallel state): safe on any subset of ranks."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    reader = FileSystemReader(str(checkpoint_dir))
    metadata = reader.read_metadata().state_dict_metadata
    missing = [key for key in keys if key not in metadata]
    if missing:
        raise ValueError(f"{checkpoint_dir}: not a Llama GPTModel checkpoint, missing tensors {missing}")
    tensors = {key: torch.empty(metadata[key].size, dtype=metadata[key].properties.dtype) for key in keys}
    dcp_load(tensors, storage_reader=reader, no_dist=True)
    return tensors


def load_encoder_from_checkpoint(model: DataWeightingModel, checkpoint_root: str | os.PathLike) -> None:
    """Initialise `model.encoder` (embedding, decoder layers, final norm) from the newest LM checkpoint
    under `checkpoint_root` (this project's layout, saved at any TP/PP). Mixer and head are untouched.

    The checkpoint's shape must match the DWM config (ValueError naming the field otherwise). The
    DWM's vocab_size may lie anywhere from the tokenizer's vocabulary to the checkpoint's padded one:
    embedding rows beyond it (padding) are dropped.
    """

    config = model.config
    arch, padded_vocab = _checkpoint_arch(checkpoint_root)
    path = latest_checkpoint_dir(checkpoint_root)
    _check_matches(config, arch, padded_vocab, str(path))
    stored = read_full_tensors(path, [_EMBEDDING, _FINAL_NORM, *_STACKED_LAYER_KEYS.values()])
    megatron = {_EMBEDDING: stored[_EMBEDDING], _FINAL_NORM: stored[_FINAL_NORM]}
    for i in range(arch.num_layers):
        for name, key in _STACKED_LAYER_KEYS.items():
            megatron[f"decoder.layers.{i}.{name}"] = stored[key][i]
    # megatron_to_hf splits the fused QKV and gate/up weights; the encoder has no output layer.
    hf = megatron_to_hf(megatron, replace(arch, untie_embeddings_and_output_weights=False), config.vocab_size)
    encoder_state = {name.removeprefix("model."): tensor.float() for name, tensor in hf.items()}
    model.encoder.load_state_dict(encoder_state, strict=True)

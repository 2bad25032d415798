"""The Data Weighting Model and its training (DESIGN.md sections 3-4)."""

from megatron_dwm.dwm.model import (
    DataWeightingModel,
    DWMConfig,
    clip_and_renormalise,
    dwm_config_from_checkpoint,
    llama_ffn_hidden_size,
    load_encoder_from_checkpoint,
    safe_weights,
)

__all__ = [
    "DWMConfig",
    "DataWeightingModel",
    "clip_and_renormalise",
    "dwm_config_from_checkpoint",
    "llama_ffn_hidden_size",
    "load_encoder_from_checkpoint",
    "safe_weights",
]

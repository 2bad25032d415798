"""Llama-2 presets and the megatron-core model provider."""

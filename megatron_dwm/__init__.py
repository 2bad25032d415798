"""megatron-dwm: Megatron-core pretraining with a Data Weighting Model."""

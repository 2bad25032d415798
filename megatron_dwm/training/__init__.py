"""Training loop, evaluation, checkpointing and metrics."""

"""Random-number states of every LLM rank, as one entry of the distributed checkpoint.

Each rank saves its Python, NumPy, torch and accelerator generators plus megatron-core's
model-parallel RNG tracker, as a ``ShardedObject`` at its (pipeline, tensor, data) coordinates, and
context under context parallelism, so a resumed run continues every stream exactly. States are
tied to the layout: a checkpoint loaded with another TP/PP/DP/CP layout keeps the fresh seeds
instead (as Megatron-LM does).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

RNG_KEY = "rng_state"


def rank_coordinates() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """((PP, TP, DP) sizes, this rank's (PP, TP, DP) ranks), CP's appended to both under context
    parallelism (a layout without it keeps the coordinates, and the checkpoints, it had before)."""
    sizes = (parallel_state.get_pipeline_model_parallel_world_size(),
             parallel_state.get_tensor_model_parallel_world_size(),
             parallel_state.get_data_parallel_world_size())
    ranks = (parallel_state.get_pipeline_model_parallel_rank(),
             parallel_state.get_tensor_model_parallel_rank(),
             parallel_state.get_data_parallel_rank())
    context_parallel_size = parallel_state.get_context_parallel_world_size()
    if context_parallel_size > 1:
        sizes, ranks = (*sizes, context_parallel_size), (*ranks, parallel_state.get_context_parallel_rank())
    return sizes, ranks


def get_rng_state() -> dict[str, Any]:
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def sharded_rng_state() -> dict[str, ShardedObject]:
    """``{RNG_KEY: ShardedObject}`` holding this rank's current states (to save, or as the load target)."""
    sizes, ranks = rank_coordinates()
    return {RNG_KEY: ShardedObject(RNG_KEY, get_rng_state(), sizes, ranks, replica_id=0)}

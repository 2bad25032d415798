"""Rank layout and process groups.

::

    world = [ LLM ranks 0 .. T-1 | DWM ranks T .. T+A-1 ]
              TP x CP x PP x DP = T   --dwm-ranks A (0 = colocated)

The LLM's tensor/context/pipeline/data-parallel groups are built by megatron-core's
``initialize_model_parallel(..., rank_offset=0, local_world_size=T)`` (Megatron-LM's rank order:
TP fastest, then CP, DP, PP), so they cover the LLM ranks
only; every rank of the world takes part in creating them (group creation is collective), and the
ranks outside get no LLM group. megatron-core's ``ProcessGroupCollection`` of the LLM is then
handed to the model, DDP, optimizer and schedules.

With DWM ranks (A > 0) two more groups exist: the DWM group (ranks T..T+A-1, a megatron-core
``HyperCommGrid`` with ``rank_offset=T``), over which the DWM is data-parallel, and the exchange
group (the whole world, always gloo, so a few floats per sample travel on the CPU with a time
limit on every wait) that carries weights, hypergradients and commands between the two sides.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.hyper_comm_grid import HyperCommGrid
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

from megatron_dwm.platform import init_platform
from megatron_dwm.rank_layout import RankLayout


@dataclass(frozen=True)
class ParallelContext:
    """This rank's place in the layout, with the LLM's process groups (None off the LLM ranks)."""

    layout: RankLayout
    rank: int
    pg_collection: ProcessGroupCollection | None
    llm_group: dist.ProcessGroup | None = None  # all LLM ranks 0..T-1 (None off them)
    dwm_group: dist.ProcessGroup | None = None  # the DWM ranks T..T+A-1 (None off them, or when A = 0)
    exchange_group: dist.ProcessGroup | None = None  # gloo over the world (None when A = 0)
    last_stage_dp_ranks: dict[int, int] = field(default_factory=dict)  # last-stage LLM rank -> its DP rank (A > 0)

    @property
    def is_llm_rank(self) -> bool:
        return self.layout.is_llm_rank(self.rank)

    @property
    def leader(self) -> int:
        """The LLM rank that logs and speaks to the DWM ranks (the last one, on the last stage, as Megatron)."""
        return self.layout.llm_world_size - 1

    @property
    def dwm_rank_list(self) -> list[int]:
        return list(range(self.layout.llm_world_size, self.layout.world_size))


def launcher_environment() -> dict[str, str]:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from torchrun or SLURM (srun)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        found = {k: env[k] for k in ("RANK", "WORLD_SIZE") if k in env}
        found["LOCAL_RANK"] = env.get("LOCAL_RANK", "0")
    elif "SLURM_PROCID" in env:
        found = {
            "RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        }
    else:
        found = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    found["MASTER_ADDR"] = env.get("MASTER_ADDR") or _slurm_first_host() or "127.0.0.1"
    found["MASTER_PORT"] = env.get("MASTER_PORT", "6000")
    return found


def _slurm_first_host() -> str | None:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        hosts = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    return hosts[0] if hosts else None


def init_distributed(timeout_minutes: int = 10) -> None:
    """Join the job's process group (no-op if already joined), on the platform's backend."""
    platform = init_platform()
    if dist.is_initialized():
        return
    env = launcher_environment()
    os.environ.update(env)
    dist.init_process_group(
        backend=platform.backend,
        rank=int(env["RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )


def initialize_parallel(
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    dwm_ranks: int = 0,
    seed: int = 1234,
    timeout_minutes: int = 10,
    virtual_pipeline_model_parallel_size: int | None = None,
    context_parallel_size: int = 1,
) -> ParallelContext:
    """Join the world, build the LLM's megatron-core groups on ranks 0..T-1, and seed the RNGs.

    `virtual_pipeline_model_parallel_size`: model chunks per pipeline rank (None: one), which selects
    megatron-core's interleaved pipeline schedule. `context_parallel_size`: ranks that split each
    sample's tokens (CP); DDP then reduces gradients over DP x CP. Called by every rank of the world.
    Raises ValueError naming the flags if the layout is impossible.
    """
    init_distributed(timeout_minutes)
    layout = RankLayout(dist.get_world_size(), tensor_model_parallel_size, pipeline_model_parallel_size, dwm_ranks,
                        context_parallel_size)
    problems = layout.problems()
    if problems:
        raise ValueError("; ".join(problems))
    rank = dist.get_rank()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        context_parallel_size=context_parallel_size,
        rank_offset=0,
        local_world_size=layout.llm_world_size,
        distributed_timeout_minutes=timeout_minutes,
    )
    if layout.llm_world_size == layout.world_size:
        llm_group = dist.group.WORLD
    else:
        llm_group = dist.new_group(list(range(layout.llm_world_size)))  # collective: every rank calls it
    pg_collection = None
    if layout.is_llm_rank(rank):
        pg_collection = ProcessGroupCollection.use_mpu_process_groups()
        seed_everything(seed)
    else:
        llm_group = None
    if not layout.dwm_ranks:
        return ParallelContext(layout, rank, pg_collection, llm_group)
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dwm_group = HyperCommGrid([layout.dwm_ranks], ["dwm"], rank_offset=layout.llm_world_size).create_pg(
        "dwm", timeout=timeout)
    exchange_group = dist.new_group(list(range(layout.world_size)), backend="gloo", timeout=timeout)
    role = None
    if pg_collection is not None and parallel_state.is_pipeline_last_stage():
        role = parallel_state.get_data_parallel_rank()
    roles: list[int | None] = [None] * layout.world_size
    dist.all_gather_object(roles, role, group=exchange_group)
    last_stage = {global_rank: dp_rank for global_rank, dp_rank in enumerate(roles) if dp_rank is not None}
    return ParallelContext(layout, rank, pg_collection, llm_group, dwm_group if not layout.is_llm_rank(rank) else None,
                           exchange_group, last_stage)


def seed_everything(seed: int) -> None:
    """Megatron-LM's seeding: offset by pipeline rank; model-parallel RNG tracker for TP regions."""
    import random

    import numpy as np

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed)


def join_optimizer_setup_outside_llm() -> None:
    """Take part, from a rank outside the LLM, in the optimizer set-up's world-wide collectives.

    megatron-core 0.19's ``get_megatron_optimizer`` aligns parameter-group keys with two
    ``all_gather_object`` calls over the whole world (dense, then expert parameters). Ranks that
    hold no LLM must make the matching calls, with no keys, while the LLM ranks build their
    optimizer, or the LLM ranks wait forever.
    """
    for _ in range(2):
        dist.all_gather_object([None] * dist.get_world_size(), [])


def destroy_parallel() -> None:
    parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def print_rank0(message: str) -> None:
    """Print on the world's rank 0 only (everywhere before the process group exists)."""
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)

"""Checkpoints in megatron-core's distributed format, in Megatron-LM's directory layout.

::

    <root>/latest_checkpointed_iteration.txt     "<iteration>" or "release"
    <root>/iter_0000100/                         megatron-core dist_checkpointing directory
    <root>/release/                              a converted (not trained) checkpoint

A distributed checkpoint is independent of TP/PP: it is written from any parallel layout and read
into any other (megatron-core reshards on load). Writes are atomic: the directory is written under
a temporary name, renamed when complete, and only then does the tracker file name it. A checkpoint
is never replaced: writing an iteration whose directory exists is an error. Loads check the
checkpoint's files first and name the directory in any error.
"""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.transformer.module import MegatronModule

from megatron_dwm.checkpoint_layout import (  # noqa: F401 - re-exported
    LOAD_ERRORS,
    RELEASE,
    TRACKER_FILE,
    CheckpointError,
    check_save_dir,
    checkpoint_name,
    checkpoint_problem,
    describe_error,
    find_checkpoint,
    iteration_dirs,
    latest_checkpoint_dir,
    load_common,
    megatron_dwm_common,
    read_checkpoint_common,
    read_tracker,
    resume_hint,
)
from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.training.build import distributed_optimizer, model_chunks
from megatron_dwm.training.torch_adam_resume import prepare_for_load, restore_adam_steps

CHECKPOINT_VERSION = 3.0


def _model_chunks(model: MegatronModule | list[MegatronModule]) -> list[MegatronModule]:
    unwrapped = []
    for chunk in model_chunks(model):
        while hasattr(chunk, "module"):  # DDP, Float16Module
            chunk = chunk.module
        unwrapped.append(chunk)
    return unwrapped


def _model_keys(count: int) -> list[str]:
    """Megatron-LM's checkpoint entries of a rank's model chunks: ``model``, or ``model0``, ``model1``, ...
    under the interleaved schedule. Each chunk's tensors are keyed by their global layer numbers,
    so the checkpoint loads into any other layout all the same."""
    return ["model"] if count == 1 else [f"model{index}" for index in range(count)]


def _model_sharded_state_dict(model: MegatronModule | list[MegatronModule]) -> dict[str, Any]:
    chunks = _model_chunks(model)
    return {key: chunk.sharded_state_dict() for key, chunk in zip(_model_keys(len(chunks)), chunks)}


def save_checkpoint(
    root: str | os.PathLike,
    iteration: int | str,
    model: MegatronModule | list[MegatronModule],
    arch: LlamaArch,
    common: dict[str, Any] | None = None,
    optimizer: MegatronOptimizer | None = None,
    sharded: dict[str, Any] | None = None,
) -> Path:
    """Write the model (plus the optimizer, `sharded` per-rank entries and `common`, which is saved
    once) under `root`, then point the tracker at it.

    Collective over the world (every LLM rank calls it; ranks outside the LLM call
    :func:`write_checkpoint` with their own entries). A reader never sees a partial checkpoint: it is
    written under a hidden name and renamed when complete.
    """
    state = _training_state_dict(model, optimizer, sharded, is_loading=False)
    return write_checkpoint(root, iteration, {**state, **checkpoint_common(iteration, model, arch, common)})


def checkpoint_common(iteration: int | str, model: MegatronModule | list[MegatronModule], arch: LlamaArch,
                      common: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint's common state (saved once): version, iteration, architecture, plus `common`."""
    return dict(checkpoint_version=CHECKPOINT_VERSION, iteration=iteration, arch=asdict(arch),
                padded_vocab_size=_model_chunks(model)[0].vocab_size, **(common or {}))


def write_checkpoint(root: str | os.PathLike, iteration: int | str, state: dict[str, Any]) -> Path:
    """Save this rank's sharded `state` (its plain entries are the common state) atomically as the
    checkpoint of `iteration` under `root`; collective over the world. An existing checkpoint of
    that iteration is never replaced (CheckpointError on every rank, before anything is written)."""
    root = Path(root)
    final = root / checkpoint_name(iteration)
    if final.exists():
        raise CheckpointError(f"{final} already exists; a checkpoint is never replaced")
    staging = root / f".{final.name}.incomplete"
    rank0 = dist.get_rank() == 0
    if rank0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
    dist.barrier()
    start_write_results_queue()
    dist_checkpointing.save(state, str(staging), preprocess_common_before_consistancy_check=_without_optimizer)
    dist.barrier()
    if rank0:
        os.replace(staging, final)
        _write_atomically(root / TRACKER_FILE, str(iteration))
    dist.barrier()
    return final


def _without_optimizer(common: dict[str, Any]) -> dict[str, Any]:
    """The common state the ranks must agree on: the optimizer's part exists on the LLM ranks only."""
    return {key: value for key, value in common.items() if key != "optimizer"}


def component_shards(components: dict[str, tuple[Any, int]], names: list[str] | None = None) -> dict[str, Any]:
    """``components/<name>``: one replicated object per registered component (name -> (component or
    None, replica id)); ranks that hold no copy contribute nothing, the copy with replica id 0 is written."""
    return {f"components/{name}": ShardedObject(f"components/{name}", component.state_dict(), (1,), (0,),
                                                replica_id=replica_id)
            for name, (component, replica_id) in components.items()
            if component is not None and (names is None or name in names)}


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run starts from, found and checked before anything is built."""

    path: Path
    common: dict[str, Any]  # its common state
    model_only: bool  # release, --finetune or no progress saved: the weights only, from iteration 0

    @property
    def iteration(self) -> int:
        """The iteration the run starts at (its first checkpoint is newer)."""
        return 0 if self.model_only else int(self.common["progress"]["iteration"])


def find_resume_point(load: str | os.PathLike, ckpt_step: int | None = None,
                      finetune: bool = False) -> ResumePoint | None:
    """The checkpoint ``--load [--ckpt-step] [--finetune]`` starts from (None: a first run); its
    files and common state are checked (CheckpointError naming the path otherwise)."""
    path = find_checkpoint(load, ckpt_step)
    if path is None:
        return None
    try:
        common = megatron_dwm_common(path)
    except CheckpointError as error:
        raise CheckpointError(f"--load {load}: {error}") from error
    release = path.name == RELEASE or common.get("iteration") == RELEASE
    return ResumePoint(path, common, model_only=release or finetune or "progress" not in common)


def load_checkpoint(
    root: str | os.PathLike,
    model: MegatronModule | list[MegatronModule],
    strict: bool = True,
    optimizer: MegatronOptimizer | None = None,
    sharded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load the newest complete checkpoint under `root` (or the checkpoint directory `root`) into
    `model` (any TP/PP) and `optimizer`.

    Returns the checkpoint's common state plus the loaded `sharded` entries (by their keys).
    """
    path = latest_checkpoint_dir(root)
    if optimizer is not None:
        prepare_for_load(optimizer)
    state = load_sharded(_training_state_dict(model, optimizer, sharded, is_loading=True), path)
    chunks = _model_chunks(model)
    for key, chunk in zip(_model_keys(len(chunks)), chunks):
        chunk.load_state_dict(state.pop(key), strict=strict)
    if optimizer is not None:
        with torch.no_grad():  # the distributed optimizer copies into its fp32 main parameters in place
            optimizer.load_state_dict(state.pop("optimizer"))
        restore_adam_steps(optimizer)
    return state


def load_sharded(state: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """megatron-core's load of `state` from the checkpoint directory `path` (collective); any error is
    re-raised as a CheckpointError naming the directory."""
    try:
        return dist_checkpointing.load(state, str(path))
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{path}: cannot be loaded ({describe_error(error)})") from error


def _training_state_dict(model, optimizer, sharded, is_loading: bool) -> dict[str, Any]:
    state = _model_sharded_state_dict(model)
    if optimizer is not None:  # mapped onto every chunk's tensors, as Megatron-LM's generate_state_dict
        state["optimizer"] = optimizer.sharded_state_dict(state, is_loading=is_loading,
                                                          **_optimizer_checkpoint_format(optimizer))
    state.update(sharded or {})
    return state


def _optimizer_checkpoint_format(optimizer) -> dict[str, Any]:
    """megatron-core's distributed optimizer saves its sharded state in Megatron-LM's default format
    (each data-parallel rank its own buckets: "dp_reshardable"); other optimizers as they always have."""
    if distributed_optimizer(optimizer) is None:
        return {}
    return {"metadata": {"distrib_optim_sharding_type": "dp_reshardable"}}


_write_results_queue_started = False


def start_write_results_queue() -> None:
    """Start the helper process of megatron-core's checkpoint writer now, immune to stop signals and
    bound to this process.

    megatron-core collects write results through a queue served by a helper process, started on
    the first save. Pre-emption (SLURM) sends SIGTERM to every process of the job, and a helper
    killed by it would make the very save that the signal asks for fail; so the helper is started
    with SIGTERM and SIGUSR1 ignored (a disposition it keeps), before training. Since no stop signal
    ends it, it must end with this process: it is forked (as Megatron-LM's own training does; it never
    touches CUDA, and spawning it would cost seconds of imports) after
    :func:`~megatron_dwm.training.child_processes.bind_children_to_this_process`, so it is SIGKILLed
    when this process dies, however it dies. Later calls do nothing, so no save opens a window in
    which a stop signal would be ignored.
    """
    global _write_results_queue_started
    if _write_results_queue_started:
        return
    from megatron.core.dist_checkpointing.strategies.filesystem_async import get_write_results_queue

    from megatron_dwm.training.child_processes import bind_children_to_this_process

    bind_children_to_this_process()
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        get_write_results_queue("fork")
        _write_results_queue_started = True
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)

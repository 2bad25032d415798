"""A run's checkpoint as the sum of its stateful pieces, saved and restored by one manager.

A checkpoint (megatron-core's distributed format, :mod:`megatron_dwm.training.checkpointing`) holds:

- the model and the optimizer, sharded (LLM ranks);
- ``common``: the state every rank agrees on, saved once: each piece added with :meth:`CheckpointManager.add`
  under its name (the progress counters, which are also the data position, and the learning-rate
  scheduler), ``rng_layout``, the ``components`` list and the run's plain ``args``;
- ``rng_state``: each LLM rank's random generators, at its (PP, TP, DP[, CP]) coordinates;
- ``components/<name>``: one replicated object per piece added with :meth:`CheckpointManager.add_component`
  (the weighting policy's DWM), written by the copy with replica id 0: the DWM ranks' manager
  holds the same entry, so a checkpoint resumes with either placement of the DWM.

Before anything is built, :func:`check_checkpoints` finds the checkpoint --load resumes from and the one
--dwm-load reads, and checks that --save holds none this run could replace.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from megatron_dwm.model.presets import LlamaArch
from megatron_dwm.parallel import print_rank0
from megatron_dwm.training import checkpointing
from megatron_dwm.training.rng import RNG_KEY, rank_coordinates, sharded_rng_state

DWM_COMPONENT = "dwm"  # the DWM's entry in a checkpoint: components/dwm
ARCH_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "kv_channels", "vocab_size")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def check_checkpoints(args: argparse.Namespace) -> tuple[checkpointing.ResumePoint | None, Path | None]:
    """The checkpoint --load starts from (None: a first run) and the one --dwm-load reads, both checked
    to be complete; and --save must hold no checkpoint this run could replace. Raises CheckpointError
    naming the path otherwise, before anything is built or written."""
    resume = checkpointing.find_resume_point(args.load, args.ckpt_step, args.finetune) if args.load else None
    if args.load and resume is None:
        print_rank0(f"no checkpoint under --load {args.load} (no {checkpointing.TRACKER_FILE}, no iter_*): "
                    "training from scratch")
    elif resume is not None and args.ckpt_step is None:
        tracker = checkpointing.read_tracker(args.load)
        if tracker is not None and checkpointing.checkpoint_name(tracker) != resume.path.name:
            print_rank0(f"{Path(args.load) / checkpointing.TRACKER_FILE} names {tracker}, but {resume.path} is "
                        "newer and complete: resuming from it")
    dwm_source = dwm_checkpoint(args.dwm_load) if args.dwm_load and not args.dwm_disable else None
    if args.save:
        checkpointing.check_save_dir(args.save, resume and resume.path, resume.iteration if resume else 0)
    return resume, dwm_source


def dwm_checkpoint(root: str) -> Path:
    """--dwm-load's checkpoint: the newest complete one under `root`, holding a DWM."""
    path = checkpointing.find_checkpoint(root, flag="--dwm-load")
    if path is None:
        raise checkpointing.CheckpointError(f"--dwm-load {root}: no checkpoint there (no "
                                            f"{checkpointing.TRACKER_FILE}, no iter_*)")
    if DWM_COMPONENT not in checkpointing.load_common(path).get("components", []):
        raise checkpointing.CheckpointError(f"--dwm-load {root}: {path} holds no DWM (its run had none, "
                                            "e.g. --dwm-disable)")
    return path


@dataclass
class Restored:
    """What :meth:`CheckpointManager.load` restored, and what it leaves to the caller."""

    model_only: bool
    with_optimizer: bool
    rng_state: dict[str, Any] | None  # to set once the data loaders have drawn their seeds


class CheckpointManager:
    """Saves and restores the stateful pieces of a run. On the LLM ranks it holds the model and
    optimizer; on the DWM ranks (``model=None``) only their components."""

    def __init__(self, model: Any = None, optimizer: Any = None, arch: LlamaArch | None = None) -> None:
        self.model = model
        self.optimizer = optimizer
        self.arch = arch
        self.pieces: dict[str, tuple[Stateful, bool]] = {}  # name -> (piece, restored only with the optimizer)
        self.components: dict[str, tuple[Stateful | None, int]] = {}  # name -> (piece or None, replica id)

    def add(self, name: str, piece: Stateful, with_optimizer: bool = False) -> None:
        """Keep `piece.state_dict()` in the common state; `with_optimizer`: restored only when the
        optimizer is (the learning-rate scheduler)."""
        self.pieces[name] = (piece, with_optimizer)

    def add_component(self, name: str, piece: Stateful | None, replica_id: int = 0) -> None:
        """Keep `piece.state_dict()` as the replicated object components/<name>. Collective: every rank
        adds every name; the ranks that hold no copy pass None, the copy with replica id 0 is written."""
        if name in self.components:
            raise ValueError(f"checkpoint component {name!r} is already added")
        self.components[name] = (piece, replica_id)

    def component_shards(self, names: list[str] | None = None) -> dict[str, Any]:
        return checkpointing.component_shards(self.components, names)

    # -- save ------------------------------------------------------------------------------------
    def common_state(self, args: argparse.Namespace) -> dict[str, Any]:
        """The common state of a checkpoint written now."""
        sizes, _ = rank_coordinates()
        return {**{name: piece.state_dict() for name, (piece, _) in self.pieces.items()},
                "rng_layout": sizes, "components": sorted(self.components),
                "args": {key: value for key, value in vars(args).items() if _plain(value)}}

    def save(self, root: str, iteration: int, common: dict[str, Any]) -> Path:
        """The LLM ranks' part of the checkpoint of `iteration` (collective over the world)."""
        start = time.time()
        path = checkpointing.save_checkpoint(root, iteration, self.model, self.arch, common=common,
                                             optimizer=self.optimizer,
                                             sharded={**sharded_rng_state(), **self.component_shards()})
        print_rank0(f"saved checkpoint at iteration {iteration:7d} to {path} in {time.time() - start:.2f} s")
        return path

    def save_components(self, root: str, iteration: int, common: dict[str, Any]) -> Path:
        """The DWM ranks' part of the checkpoint of `iteration`: their components (collective)."""
        return checkpointing.write_checkpoint(root, iteration, {**self.component_shards(), **common})

    # -- load ------------------------------------------------------------------------------------
    def load(self, resume: checkpointing.ResumePoint, args: argparse.Namespace) -> Restored:
        """Resume from `resume` (found by :func:`check_checkpoints`), honouring --no-load-optim,
        --no-load-rng and --finetune; the random states are returned, not set."""
        common, path, model_only = resume.common, resume.path, resume.model_only
        self._check_arch(common["arch"], path)
        with_optimizer = not model_only and not args.no_load_optim
        sizes, _ = rank_coordinates()
        same_layout = tuple(common.get("rng_layout", ())) == tuple(sizes)
        load_rng = not model_only and not args.no_load_rng and same_layout
        saved = self.saved_components(common, model_only)
        try:
            state = checkpointing.load_checkpoint(
                path, self.model, optimizer=self.optimizer if with_optimizer else None,
                sharded={**(sharded_rng_state() if load_rng else {}), **self.component_shards(saved)})
        except checkpointing.CheckpointError as error:  # complete, but its bytes are not what they were
            raise checkpointing.CheckpointError(
                f"--load {args.load}: {error}.{checkpointing.resume_hint(path.parent, bad=path)}") from error
        self._restore_components(state, saved)
        if not load_rng and not model_only and not args.no_load_rng:
            print_rank0(f"checkpoint layout (PP, TP, DP[, CP]) {tuple(common.get('rng_layout', ()))} differs from this "
                        f"run's {tuple(sizes)}: random states start from --seed")
        if not model_only:
            for name, (piece, needs_optimizer) in self.pieces.items():
                if with_optimizer or not needs_optimizer:
                    piece.load_state_dict(common[name])
        return Restored(model_only, with_optimizer, state[RNG_KEY] if load_rng else None)

    def saved_components(self, common: dict[str, Any], model_only: bool = False) -> list[str]:
        """The components this manager holds that the checkpoint with `common` state has."""
        return [] if model_only else [name for name in common.get("components", []) if name in self.components]

    def load_components(self, path: Path, names: list[str], **options: Any) -> None:
        """Only the components `names` from the checkpoint directory `path` (collective), e.g. the DWM
        of another run (--dwm-load); `options` go to each piece's load_state_dict."""
        self._restore_components(checkpointing.load_sharded(self.component_shards(names), path), names, **options)

    def _restore_components(self, state: dict[str, Any], names: list[str], **options: Any) -> None:
        for name in names:
            piece = self.components[name][0]
            if piece is not None and f"components/{name}" in state:
                piece.load_state_dict(state[f"components/{name}"], **options)

    def _check_arch(self, saved: dict[str, Any], root: Path) -> None:
        mismatched = [f"{key}: checkpoint {saved[key]}, this run {getattr(self.arch, key)}"
                      for key in ARCH_KEYS if key in saved and saved[key] != getattr(self.arch, key)]
        if mismatched:
            raise checkpointing.CheckpointError(f"--load {root}: the checkpoint's model differs from this run's: "
                                                + "; ".join(mismatched))


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str)) or (
        isinstance(value, list) and all(isinstance(item, (int, float, str)) for item in value))

"""Megatron-LM's checkpoint directory layout, readable without building a model.

::

    <root>/latest_checkpointed_iteration.txt     "<iteration>" or "release"
    <root>/iter_0000100/                         megatron-core dist_checkpointing directory
    <root>/release/                              a converted (not trained) checkpoint
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from megatron.core import dist_checkpointing

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RELEASE = "release"


def checkpoint_name(iteration: int | str) -> str:
    return RELEASE if iteration == RELEASE else f"iter_{int(iteration):07d}"


def read_tracker(root: str | os.PathLike) -> str | None:
    """The iteration (or "release") named by the tracker file, or None if there is none."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    value = tracker.read_text().strip()
    if value != RELEASE and not value.isdigit():
        raise ValueError(f"{tracker}: expected an iteration number or 'release', found {value!r}")
    return value


def latest_checkpoint_dir(root: str | os.PathLike) -> Path:
    """The newest complete checkpoint under `root` (or `root` itself if it is a checkpoint dir)."""
    root = Path(root)
    if (root / "metadata.json").is_file():
        return root
    value = read_tracker(root)
    if value is None:
        raise FileNotFoundError(f"{root}: no {TRACKER_FILE} and not a checkpoint directory")
    path = root / checkpoint_name(value)
    if not path.is_dir():
        raise FileNotFoundError(f"{root / TRACKER_FILE} names {value}, but {path} does not exist")
    return path


def read_checkpoint_common(root: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's non-tensor state (arch, padded_vocab_size, iteration, ...), read without a model."""
    path = latest_checkpoint_dir(root)
    if not (path / "metadata.json").is_file():
        raise ValueError(f"{path}: not a megatron-core distributed checkpoint (no metadata.json)")
    common = dist_checkpointing.load_common_state_dict(str(path))
    if "arch" not in common or "padded_vocab_size" not in common:
        raise ValueError(f"{path}: not a megatron-dwm checkpoint (no 'arch'/'padded_vocab_size' entries)")
    return common

"""Megatron-LM's checkpoint directory layout, readable without building a model.

::

    <root>/latest_checkpointed_iteration.txt     "<iteration>" or "release"
    <root>/iter_0000100/                         megatron-core dist_checkpointing directory
    <root>/release/                              a converted (not trained) checkpoint

Which checkpoint a run resumes from, and whether a directory's checkpoints are complete, is decided
here, before any model is built: a run never starts from scratch next to checkpoints it could not
read, and never loads a checkpoint with a file missing or cut short.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from megatron.core import dist_checkpointing
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RELEASE = "release"
_ITERATION_DIR = re.compile(r"iter_(\d{7,})")
_COMMON_FILE = "common.pt"  # megatron-core's legacy place for the common state


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, or a directory a run must not write to; names the path."""


# What reading a damaged checkpoint raises: anything, and torch.distributed.checkpoint's
# CheckpointException, which is a BaseException.
LOAD_ERRORS: tuple[type[BaseException], ...] = (Exception, CheckpointException)


def checkpoint_name(iteration: int | str) -> str:
    return RELEASE if iteration == RELEASE else f"iter_{int(iteration):07d}"


def read_tracker(root: str | os.PathLike) -> str | None:
    """The iteration (or "release") named by the tracker file, or None if there is none."""
    tracker = Path(root) / TRACKER_FILE
    if not tracker.is_file():
        return None
    value = tracker.read_text().strip()
    if value != RELEASE and not value.isdigit():
        raise CheckpointError(f"{tracker}: expected an iteration number or 'release', found {value!r}")
    return value


def _iteration_of(path: Path) -> int | None:
    match = _ITERATION_DIR.fullmatch(path.name)
    return int(match.group(1)) if match else None


def iteration_dirs(root: str | os.PathLike) -> dict[int, Path]:
    """The ``iter_NNNNNNN`` entries of `root` (complete or not) by iteration, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return {}
    found = {iteration: entry for entry in root.iterdir() if (iteration := _iteration_of(entry)) is not None}
    return dict(sorted(found.items()))


def checkpoint_problem(path: str | os.PathLike) -> str | None:
    """What makes the checkpoint directory `path` unloadable, naming the file; None if it is complete.

    Complete: ``metadata.json`` and megatron-core's ``.metadata`` (torch.distributed.checkpoint's
    pickled `Metadata`) are readable, and every file that ``.metadata`` stores data in (the
    ``__R_I.distcp`` files) exists and is at least as long as the last byte range it lists; the
    common state is among them (or, in megatron-core's legacy format, in ``common.pt``).
    """
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a directory"
    for name in ("metadata.json", ".metadata"):
        if not (path / name).is_file():
            return f"{path / name} is missing"
    try:
        json.loads((path / "metadata.json").read_text())
    except (ValueError, OSError) as error:
        return f"{path / 'metadata.json'} cannot be read ({error})"
    try:
        metadata = FileSystemReader(str(path)).read_metadata()
        extents = _file_extents(metadata)
    except LOAD_ERRORS as error:  # unpickling a damaged file raises anything
        return f"{path / '.metadata'} cannot be read ({describe_error(error)})"
    for name, needed in sorted(extents.items()):
        file = path / name
        if not file.is_file():
            return f"{file} is missing (listed in {path / '.metadata'})"
        size = file.stat().st_size
        if size < needed:
            return f"{file} is truncated: {size} bytes, {path / '.metadata'} lists data up to byte {needed}"
    has_common = any(key.startswith("common_state/") for key in metadata.state_dict_metadata)
    if not has_common and not (path / _COMMON_FILE).is_file():
        return f"{path / _COMMON_FILE} is missing (and {path / '.metadata'} lists no common state)"
    return None


def _file_extents(metadata: Any) -> dict[str, int]:
    """File name -> the end of the last byte range stored in it, from a checkpoint's `Metadata`."""
    extents: dict[str, int] = {}
    for info in metadata.storage_data.values():
        extents[info.relative_path] = max(extents.get(info.relative_path, 0), info.offset + info.length)
    return extents


def find_checkpoint(root: str | os.PathLike, ckpt_step: int | None = None, flag: str = "--load") -> Path | None:
    """The checkpoint that ``--load root [--ckpt-step N]`` resumes from, checked to be complete.

    None only when `root` holds no tracker file and no ``iter_*`` entry at all (a first run). The
    newest checkpoint is the newer of the tracker's iteration and the newest ``iter_*`` entry (a
    job killed between a checkpoint's rename and the tracker's update has the newer one complete).
    A tracker naming a missing iteration, or a missing or incomplete newest checkpoint, raises
    CheckpointError naming it and the newest complete one, which ``--ckpt-step`` selects (for `flag`
    --load; another flag, such as --dwm-load, can name that directory itself). `root` may also be a
    checkpoint directory itself.
    """
    root = Path(root)
    if (root / "metadata.json").is_file():
        if ckpt_step is not None:
            raise CheckpointError(f"--ckpt-step {ckpt_step}: {flag} {root} is a checkpoint directory itself, "
                                  f"not a directory of iter_* checkpoints")
        _require_complete(root, None, flag)
        return root
    if ckpt_step is not None:
        path = root / checkpoint_name(ckpt_step)
        _require_complete(path, root, flag, f"--ckpt-step {ckpt_step}: ")
        return path
    tracker = read_tracker(root)
    iterations = iteration_dirs(root)
    if tracker is None and not iterations:
        if (root / RELEASE).exists():
            raise CheckpointError(f"{root} holds {RELEASE}/ but no {TRACKER_FILE}: write '{RELEASE}' into "
                                  f"{root / TRACKER_FILE} to load that checkpoint")
        return None
    if tracker == RELEASE:
        path = root / RELEASE
        _require_complete(path, None, flag, f"{root / TRACKER_FILE} names {RELEASE}: ")
        return path
    if tracker is not None and not (root / checkpoint_name(tracker)).exists():
        raise CheckpointError(f"{flag} {root}: {root / TRACKER_FILE} names iteration {tracker}, but "
                              f"{root / checkpoint_name(tracker)} does not exist.{resume_hint(root, flag)}")
    newest = max([*iterations, *([int(tracker)] if tracker is not None else [])])
    path = root / checkpoint_name(newest)
    _require_complete(path, root, flag, "the newest checkpoint is incomplete: ")
    return path


def _require_complete(path: Path, root: Path | None, flag: str, context: str = "") -> None:
    """CheckpointError unless `path` is complete; with `root`, naming the newest complete checkpoint under it."""
    problem = checkpoint_problem(path)
    if problem is not None:
        hint = resume_hint(root, flag=flag, bad=path) if root is not None else ""
        raise CheckpointError(f"{flag} {root or path}: {context}{problem}.{hint}")


def newest_complete(root: str | os.PathLike, before: int | None = None) -> tuple[int, Path] | None:
    """The newest complete ``iter_*`` checkpoint of `root` (older than `before`) as (iteration, path)."""
    for iteration, path in reversed(iteration_dirs(root).items()):
        if (before is None or iteration < before) and checkpoint_problem(path) is None:
            return iteration, path
    return None


def resume_hint(root: Path, flag: str = "--load", bad: Path | None = None) -> str:
    """How to go on when the checkpoint `bad` under `root` cannot be used: the newest complete one
    older than it, and how to select it with `flag` (--load: --ckpt-step, after moving `bad` away
    if it is newer)."""
    bad_iteration = _iteration_of(bad) if bad is not None else None
    complete = newest_complete(root, before=bad_iteration)
    if complete is None:
        return f" There is no other complete checkpoint under {root}."
    iteration, path = complete
    if flag != "--load":
        return f" The newest complete checkpoint under {root} is {path}: give {flag} {path} to use it."
    before = f" before {bad.name}" if bad_iteration is not None else ""
    move = (f" A run that saves into {root} must first have {bad} moved out of it: no run replaces a "
            "checkpoint it did not load." if bad_iteration is not None and bad.exists() else "")
    return (f" The newest complete checkpoint under {root}{before} is {path}: pass --ckpt-step {iteration} to "
            f"resume from it.{move}")


def check_save_dir(save: str | os.PathLike, loaded: Path | None, start_iteration: int) -> None:
    """Refuse (CheckpointError naming the directory) a run whose checkpoints could replace one it did
    not load: `save` may hold ``iter_*`` checkpoints only if the run resumes from one of them
    (`loaded`) and they are no newer than the iteration it starts at."""
    save = Path(save)
    existing = iteration_dirs(save)
    if not existing:
        return
    resumed_here = loaded is not None and loaded.parent.resolve() == save.resolve()
    if not resumed_here:
        names = ", ".join(path.name for path in existing.values())
        raise CheckpointError(f"--save {save} already holds checkpoints that this run did not load ({names}); "
                              f"a new run would replace them. Resume them with --load {save}, or save elsewhere.")
    newer = [path for iteration, path in existing.items() if iteration > start_iteration]
    if newer:
        what, it = ("those iterations", "them") if len(newer) > 1 else ("that iteration", "it")
        raise CheckpointError(
            f"--save {save} holds {', '.join(str(path) for path in newer)}, newer than iteration {start_iteration}, "
            f"where this run starts (from {loaded}); the run would write {what} again and replace "
            f"{it}. Move {it} out of {save} (e.g. a corrupt checkpoint), or save elsewhere.")


def latest_checkpoint_dir(root: str | os.PathLike) -> Path:
    """The newest complete checkpoint under `root` (or `root` itself if it is a checkpoint dir)."""
    path = find_checkpoint(root)
    if path is None:
        raise CheckpointError(f"{root}: no checkpoint (no {TRACKER_FILE}, no iter_* directory)")
    return path


def load_common(path: str | os.PathLike) -> dict[str, Any]:
    """The common (non-tensor) state of the checkpoint directory `path`; errors name the directory."""
    try:
        return dist_checkpointing.load_common_state_dict(str(path))
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{path}: cannot read its common state ({describe_error(error)})") from error


def describe_error(error: BaseException) -> str:
    """A load error as "Type: message"; for torch.distributed.checkpoint's, which gathers every rank's
    traceback, the first failing rank's error."""
    if isinstance(error, CheckpointException) and error.failures:
        rank, (error, _) = next(iter(error.failures.items()))
        return f"rank {rank}: {describe_error(error)}"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_checkpoint_common(root: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's non-tensor state (arch, padded_vocab_size, iteration, ...), read without a model."""
    return megatron_dwm_common(latest_checkpoint_dir(root))


def megatron_dwm_common(path: str | os.PathLike) -> dict[str, Any]:
    """The common state of the checkpoint directory `path`, which must be a megatron-dwm checkpoint's."""
    common = load_common(path)
    if "arch" not in common or "padded_vocab_size" not in common:
        raise CheckpointError(f"{path}: not a megatron-dwm checkpoint (no 'arch'/'padded_vocab_size' entries)")
    return common

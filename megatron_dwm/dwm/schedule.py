"""Stages (DESIGN.md section 1): each stage opens with a DWM phase, then the DWM is frozen.

With ``--dwm-stages S``, ``--dwm-update-iters K`` and ``--dwm-update-interval M`` over
``--train-iters T``, stage ``s`` covers iterations ``[s*T/S, (s+1)*T/S)`` (0-based, the last
stage takes the remainder); in its first ``K`` iterations the DWM is updated every ``M``-th
iteration alongside the LLM (the DWM phase), and for the rest of the stage it only weighs (the
LLM phase). ``K`` defaults to the whole stage.
"""

from __future__ import annotations

from dataclasses import dataclass


def stage_length(train_iters: int, stages: int) -> int:
    """Iterations of every stage but the last, which also takes the remainder: floor(T / S)."""
    return train_iters // stages


def default_update_iters(train_iters: int, stages: int) -> int:
    """The DWM phase when --dwm-update-iters is not given: the whole stage (the DWM learns all along)."""
    return max(stage_length(train_iters, stages), 1)


def stages_problem(train_iters: int, stages: int) -> str | None:
    """Why `stages` stages do not fit in `train_iters` iterations (each needs one), or None."""
    return f"--dwm-stages {stages} exceeds --train-iters {train_iters}" if stages > train_iters else None


def phase_problem(train_iters: int, stages: int, update_iters: int) -> str | None:
    """Why a DWM phase of `update_iters` iterations does not fit in a stage, or None."""
    length = stage_length(train_iters, stages)
    if update_iters <= length:
        return None
    return (f"--dwm-update-iters {update_iters} exceeds the stage length {length} "
            f"(--train-iters {train_iters} / --dwm-stages {stages})")


@dataclass(frozen=True)
class StageSchedule:
    train_iters: int
    stages: int = 1
    update_iters: int = 0
    update_interval: int = 1
    frozen: bool = False  # --dwm-freeze / --dwm-disable: never update

    def __post_init__(self) -> None:
        if self.stages < 1 or self.update_interval < 1 or self.update_iters < 0:
            raise ValueError("--dwm-stages and --dwm-update-interval must be >= 1, --dwm-update-iters >= 0")
        problem = stages_problem(self.train_iters, self.stages)
        if problem:
            raise ValueError(problem)

    @property
    def stage_length(self) -> int:
        return stage_length(self.train_iters, self.stages)

    def stage_start(self, stage: int) -> int:
        return stage * self.stage_length

    def stage_of(self, iteration: int) -> int:
        """The stage of 0-based `iteration` (the step that takes the run from `iteration` to `iteration + 1`)."""
        return min(iteration // self.stage_length, self.stages - 1)

    def in_dwm_phase(self, iteration: int) -> bool:
        return not self.frozen and iteration - self.stage_start(self.stage_of(iteration)) < self.update_iters

    def updates_dwm(self, iteration: int) -> bool:
        """Whether the DWM takes an outer step at 0-based `iteration`."""
        offset = iteration - self.stage_start(self.stage_of(iteration))
        return self.in_dwm_phase(iteration) and offset % self.update_interval == 0

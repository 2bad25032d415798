"""Stages (DESIGN.md section 1): each stage opens with a DWM phase, then the DWM is frozen.

With ``--dwm-stages S``, ``--dwm-update-iters K`` and ``--dwm-update-interval M`` over
``--train-iters T``, stage ``s`` covers iterations ``[s*T/S, (s+1)*T/S)`` (0-based, the last
stage takes the remainder); in its first ``K`` iterations the DWM is updated every ``M``-th
iteration alongside the LLM (the DWM phase), and for the rest of the stage it only weighs (the
LLM phase).
"""

from __future__ import annotations

from dataclasses import dataclass


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
        if self.stages > self.train_iters:
            raise ValueError(f"--dwm-stages {self.stages} exceeds --train-iters {self.train_iters}")

    @property
    def stage_length(self) -> int:
        return self.train_iters // self.stages

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

    def boundaries(self) -> list[int]:
        return [self.stage_start(stage) for stage in range(self.stages)]

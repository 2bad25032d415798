"""A run's DWM stages and phases, in iterations (steps completed): from the schedule the run logged
(its `dwm/schedule/...` scalars) or, for the metrics of an older trainer, inferred from the logged
`dwm/stage` and `dwm/phase`.

Stage s of a schedule with stage length L covers the 0-based steps [s*L, (s+1)*L), logged as
iterations s*L + 1 .. (s+1)*L, so its boundary is at s*L, and a DWM phase of K steps spans
[s*L, s*L + K].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from megatron_dwm.analysis.run_files import AnalysisError, is_int
from megatron_dwm.training.metrics import SCHEDULE_PREFIX

_SCHEDULE_KEYS = ("train iters", "stages", "update iters", "frozen")


@dataclass(frozen=True)
class RecordedSchedule:
    """The stage schedule a run logged (its `dwm/schedule/...` scalars)."""

    train_iters: int
    stages: int
    stage_length: int
    update_iters: int
    frozen: bool

    def boundaries(self) -> list[int]:
        """Iterations (steps completed) at which stages 1, 2, ... start."""
        return [stage * self.stage_length for stage in range(1, self.stages)]

    def phase_spans(self) -> list[tuple[int, int]]:
        """(start, end) of each stage's DWM phase, its first `update_iters` steps (none when frozen);
        the last stage runs to `train_iters`."""
        if self.frozen or self.update_iters == 0:
            return []
        ends = [*self.boundaries(), self.train_iters]
        return [(stage * self.stage_length, min(stage * self.stage_length + self.update_iters, ends[stage]))
                for stage in range(self.stages)]


def recorded_schedule(records: list[dict[str, Any]]) -> RecordedSchedule | None:
    """The schedule the run logged with its first record, None if it logged none (an older trainer)."""
    values = {key[len(SCHEDULE_PREFIX):]: value for record in records for key, value in record.items()
              if key.startswith(SCHEDULE_PREFIX)}
    if not values:
        return None
    missing = [SCHEDULE_PREFIX + key for key in _SCHEDULE_KEYS if not is_int(values.get(key))]
    if missing:
        raise AnalysisError(f"the metrics' schedule record lacks integer {', '.join(missing)}")
    train_iters, stages = values["train iters"], values["stages"]
    if not 1 <= stages <= train_iters:
        raise AnalysisError(f"the metrics' schedule record has {stages} stages in {train_iters} iterations")
    length = values.get("stage length")
    return RecordedSchedule(train_iters, stages, length if is_int(length) else train_iters // stages,
                            values["update iters"], bool(values["frozen"]))


def stage_boundaries(records: list[dict[str, Any]]) -> list[int]:
    """Iterations at which a new stage starts: the run's recorded schedule, else inferred from the
    logged `dwm/stage` (:func:`inferred_stage_boundaries`)."""
    schedule = recorded_schedule(records)
    return schedule.boundaries() if schedule else inferred_stage_boundaries(records)


def dwm_phase_spans(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) iterations of each DWM phase: the run's recorded schedule, else inferred from the
    logged `dwm/phase` (:func:`inferred_dwm_phase_spans`)."""
    schedule = recorded_schedule(records)
    return schedule.phase_spans() if schedule else inferred_dwm_phase_spans(records)


def inferred_stage_boundaries(records: list[dict[str, Any]]) -> list[int]:
    """Iterations whose `dwm/stage` differs from that of the previous record that has one: up to one
    log interval after the true boundary."""
    stages = [(r["iteration"], r["dwm/stage"]) for r in records if "dwm/stage" in r]
    return [iteration for (_, before), (iteration, stage) in zip(stages, stages[1:]) if stage != before]


def inferred_dwm_phase_spans(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) iterations of each run of records with `dwm/phase` 1. A span ends at the next
    record with `dwm/phase` 0 (the switch happened in that log interval), else at the last record;
    a phase that no logged iteration fell in is missed."""
    phases = [(r["iteration"], r["dwm/phase"] == 1) for r in records if "dwm/phase" in r]
    spans = []
    for index, (iteration, on) in enumerate(phases):
        if on and (index == 0 or not phases[index - 1][1]):  # a DWM phase starts
            end = next((i for i, later_on in phases[index + 1:] if not later_on), phases[-1][0])
            spans.append((iteration, end))
    return spans

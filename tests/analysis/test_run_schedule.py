"""Stage boundaries and DWM phases from the schedule a run logs, at their true iterations even when
the log interval does not divide them; the inference from logged records for older metrics files."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from megatron_dwm.analysis import run_files, run_plots, run_schedule
from megatron_dwm.training.metrics import schedule_scalars

LOG_INTERVAL = 10


def _trainers_stage_schedule() -> type:
    """The trainer's StageSchedule (the oracle of these tests), loaded from its file: importing the
    megatron_dwm.dwm package would load megatron-core, seconds for one small dataclass."""
    path = Path(__file__).resolve().parents[2] / "megatron_dwm" / "dwm" / "schedule.py"
    spec = importlib.util.spec_from_file_location("_trainers_stage_schedule", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.StageSchedule


StageSchedule = _trainers_stage_schedule()


def _expected(train_iters: int, stages: int, update_iters: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The documented schedule: stage s starts after s * (T // S) steps, the last runs to T, and its
    DWM phase is its first `update_iters` steps."""
    length = train_iters // stages
    starts = [s * length for s in range(stages)]
    ends = starts[1:] + [train_iters]
    return starts[1:], [(start, min(start + update_iters, end)) for start, end in zip(starts, ends)]


def _records(schedule: StageSchedule, with_schedule: bool = True) -> list[dict[str, Any]]:
    """What the trainer logs every LOG_INTERVAL iterations: record i (i steps completed) describes
    the 0-based step i - 1; the first record carries the schedule."""
    records = [{"iteration": i, "lm loss": 3.0 - i / 1000, "dwm/stage": schedule.stage_of(i - 1),
                "dwm/phase": int(schedule.in_dwm_phase(i - 1)), "dwm/weight/A": 1.0}
               for i in range(LOG_INTERVAL, schedule.train_iters + 1, LOG_INTERVAL)]
    if with_schedule:
        records[0].update(schedule_scalars(schedule))
    return records


@pytest.mark.parametrize("train_iters, stages, update_iters", [(100, 4, 5), (103, 4, 30), (100, 4, 0)])
def test_schedule_record_gives_the_true_iterations(train_iters, stages, update_iters):
    """Stages of 25 iterations logged every 10: the boundaries at 25, 50, 75, not at the first
    logged iteration of each stage; a phase of 5 iterations is shaded though no log falls in it."""
    schedule = StageSchedule(train_iters, stages, update_iters)
    records = _records(schedule)
    boundaries, spans = _expected(train_iters, stages, update_iters)
    assert run_schedule.stage_boundaries(records) == boundaries
    assert run_schedule.dwm_phase_spans(records) == (spans if update_iters else [])
    assert run_schedule.inferred_stage_boundaries(records) != boundaries  # what older metrics give


def test_frozen_schedule_has_no_dwm_phases():
    records = _records(StageSchedule(100, 4, 5, frozen=True))
    assert run_schedule.dwm_phase_spans(records) == []
    assert run_schedule.stage_boundaries(records) == _expected(100, 4, 5)[0]


@pytest.mark.parametrize("train_iters, stages, update_iters", [(100, 4, 5), (103, 4, 30), (7, 2, 3)])
def test_recorded_schedule_agrees_with_the_trainers_stages_step_by_step(train_iters, stages, update_iters):
    """Step j (logged as iteration j + 1) lies in stage (number of boundaries <= j) and in a DWM phase
    iff start <= j < end for a span: the trainer's StageSchedule, step by step."""
    schedule = StageSchedule(train_iters, stages, update_iters)
    records = [{"iteration": 1, **schedule_scalars(schedule)}]
    boundaries, spans = run_schedule.stage_boundaries(records), run_schedule.dwm_phase_spans(records)
    for step in range(train_iters):
        assert sum(b <= step for b in boundaries) == schedule.stage_of(step)
        assert any(start <= step < end for start, end in spans) == schedule.in_dwm_phase(step)


def test_without_a_schedule_record_the_logged_records_are_used():
    """Older metrics: a boundary at the first logged iteration of the new stage; a phase from its first
    logged iteration to the next logged iteration outside it."""
    records = _records(StageSchedule(100, 4, 15), with_schedule=False)
    assert run_schedule.recorded_schedule(records) is None
    first_of_stage = {}
    for record in records:
        first_of_stage.setdefault(record["dwm/stage"], record["iteration"])
    assert run_schedule.stage_boundaries(records) == [first_of_stage[s] for s in (1, 2, 3)] == [30, 60, 80]
    assert run_schedule.dwm_phase_spans(records) == run_schedule.inferred_dwm_phase_spans(records)
    assert run_schedule.dwm_phase_spans(records) == [(10, 20), (30, 50), (60, 70), (80, 100)]


def test_incomplete_schedule_record_is_reported():
    records = [{"iteration": 10, "dwm/schedule/train iters": 100, "dwm/schedule/stages": 4}]
    with pytest.raises(run_files.AnalysisError, match="dwm/schedule/update iters"):
        run_schedule.stage_boundaries(records)


def _drawn(monkeypatch, records: list[dict[str, Any]]) -> tuple[list[float], list[tuple[float, float]]]:
    """(dashed vertical lines' x, shaded spans' (start, end)) that plot_domain_weights draws."""
    figures = []
    monkeypatch.setattr(run_plots, "save_figure", lambda figure, path: figures.append(figure) or path)
    run_plots.plot_domain_weights(records, "unused.png")
    (axes,) = figures[0].axes
    lines = [line.get_xdata()[0] for line in axes.lines if line.get_linestyle() == "--"]
    spans = [(patch.get_x(), patch.get_x() + patch.get_width()) for patch in axes.patches]
    return lines, spans


def test_plot_draws_the_schedule_not_the_logged_iterations(monkeypatch):
    boundaries, spans = _expected(100, 4, 5)
    lines, shaded = _drawn(monkeypatch, _records(StageSchedule(100, 4, 5)))
    assert lines == boundaries
    assert shaded == [pytest.approx(span) for span in spans]

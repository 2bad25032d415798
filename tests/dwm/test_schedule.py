"""The stage schedule (--dwm-stages, --dwm-update-iters, --dwm-update-interval, --dwm-freeze):
exactly which iterations update the DWM, against sets written out by hand and an independent
formula, and once end-to-end through a training run's samples log."""

from __future__ import annotations

import json

import pytest

from megatron_dwm.dwm.schedule import StageSchedule
from megatron_dwm.training.metrics import read_metrics
from tests.training.corpus import training_flags
from tests.training.launch import run_job

# (train_iters, stages, update_iters, update_interval, frozen) -> the 0-based iterations that update the DWM
BY_HAND = {
    (6, 2, 2, 1, False): {0, 1, 3, 4},  # tests/training/test_dwm_ranks.py's run (logged as 1, 2, 4, 5)
    (10, 3, 2, 1, False): {0, 1, 3, 4, 6, 7},  # stages [0, 3), [3, 6), [6, 10): the last takes the remainder
    (10, 3, 3, 2, False): {0, 2, 3, 5, 6, 8},  # the interval restarts at every stage's first iteration
    (7, 1, 7, 3, False): {0, 3, 6},
    (7, 2, 3, 2, False): {0, 2, 3, 5},  # stage 1 is [3, 7): its phase is [3, 6), iteration 6 only weighs
    (8, 4, 1, 5, False): {0, 2, 4, 6},  # an interval longer than the phase: the phase's first iteration only
    (8, 2, 0, 1, False): set(),  # no DWM phase
    (8, 2, 4, 1, True): set(),  # --dwm-freeze / --dwm-disable
    (5, 5, 1, 1, False): {0, 1, 2, 3, 4},  # one-iteration stages, every one a DWM phase
}


def _updated(schedule: StageSchedule) -> set[int]:
    return {i for i in range(schedule.train_iters) if schedule.updates_dwm(i)}


def _expected(train_iters: int, stages: int, update_iters: int, interval: int, frozen: bool) -> set[int]:
    """The documented rule, written independently: stage s starts at s * floor(T / S) and the last
    stage ends at T; its DWM phase is its first K iterations (at most the whole stage), in which
    every M-th iteration, counted from the stage's start, updates."""
    if frozen:
        return set()
    length = train_iters // stages
    starts = [s * length for s in range(stages)]
    ends = starts[1:] + [train_iters]
    return {start + k for start, end in zip(starts, ends) for k in range(0, min(update_iters, end - start), interval)}


@pytest.mark.parametrize("combination", sorted(BY_HAND), ids=str)
def test_updated_iterations_by_hand(combination):
    assert _updated(StageSchedule(*combination)) == BY_HAND[combination]
    assert _expected(*combination) == BY_HAND[combination]  # the formula below is checked against the same table


def test_updated_iterations_match_the_rule_over_a_sweep():
    checked = 0
    for train_iters in range(1, 13):
        for stages in range(1, train_iters + 1):
            for update_iters in range(0, train_iters // stages + 1):
                for interval in (1, 2, 3, 5):
                    for frozen in (False, True):
                        combination = (train_iters, stages, update_iters, interval, frozen)
                        schedule = StageSchedule(*combination)
                        assert _updated(schedule) == _expected(*combination), combination
                        assert {i for i in range(train_iters) if schedule.in_dwm_phase(i)} == (
                            set() if frozen else _expected(train_iters, stages, update_iters, 1, False)), combination
                        checked += 1
    assert checked > 1000


def test_stage_boundaries():
    schedule = StageSchedule(10, 3, 1)
    assert [schedule.stage_start(stage) for stage in range(schedule.stages)] == [0, 3, 6]
    assert [schedule.stage_of(i) for i in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


@pytest.mark.parametrize("combination", [(4, 5, 1, 1), (4, 0, 1, 1), (4, 1, 1, 0), (4, 1, -1, 1)])
def test_impossible_schedules_are_refused(combination):
    with pytest.raises(ValueError, match="--dwm-"):
        StageSchedule(*combination)


def test_update_interval_in_a_training_run(corpus, tmp_path):
    """--train-iters 7 --dwm-stages 2 --dwm-update-iters 3 --dwm-update-interval 2: the DWM updates
    after 0-based iterations {0, 2, 3, 5}, i.e. the samples log holds a hypergradient at iterations
    {1, 3, 4, 6} (it logs after each step) and at no other."""
    metrics = tmp_path / "metrics.jsonl"
    run_job(training_flags(corpus, "--train-iters", "7", "--dwm-stages", "2", "--dwm-update-iters", "3",
                           "--dwm-update-interval", "2", "--metrics-file", str(metrics), dwm=True), 1, tmp_path / "logs")
    samples = [json.loads(line) for line in (tmp_path / "dwm_samples.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in samples] == list(range(1, 8))
    assert {record["iteration"] for record in samples if "hypergradient" in record} == {1, 3, 4, 6}
    records = {r["iteration"]: r for r in read_metrics(metrics) if "dwm/phase" in r}
    assert {i: r["dwm/phase"] for i, r in records.items()} == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1, 6: 1, 7: 0}
    assert {i: r["dwm/stage"] for i, r in records.items()} == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 1, 7: 1}
    assert {i for i, r in records.items() if "dwm/hypergrad norm" in r} == {1, 3, 4, 6}

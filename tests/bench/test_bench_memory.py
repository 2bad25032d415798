"""bench/bench_memory.py on the tiny preset: its report's structure, the model's parameters and Adam's
state against the benchmark's own count from the architecture, and activation recomputation lowering
the peak. The ranks run through tests/distributed.py (preloaded processes) instead of torchrun."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from bench_memory import (  # noqa: E402
    DATA_PARALLEL,
    FP32,
    Shape,
    measure_rank,
    parameter_count,
    render_markdown,
    report,
)
from tests.distributed import run_distributed  # noqa: E402

SHAPE = Shape("tiny", seq_length=64, micro_batch_size=2, vocab_size=256, steps=2)
CONFIGS = ["plain", "selective", "full", "distopt"]


def _rank(rank: int, world_size: int, config: str, shape: Shape) -> dict[str, int]:
    return measure_rank(config, shape)


def _measure(config: str, shape: Shape) -> list[dict[str, int]]:
    return run_distributed(_rank, DATA_PARALLEL, (config, shape))


@pytest.fixture(scope="module")
def result() -> dict:
    return report(SHAPE, CONFIGS, measure=_measure)


def test_report_lists_each_configuration_with_its_figures_and_theory(result):
    rows = {row["config"]: row for row in result["rows"]}
    assert list(rows) == CONFIGS
    for row in rows.values():
        assert row["peak allocated"] > row["parameters"] + row["gradient buffers"] + row["adam"] > 0
        assert set(row["expected"]) == {"layer activations", "adam", "saving"}
    assert rows["plain"]["saving"] == 0
    table = render_markdown(result).splitlines()
    assert table[0].startswith(SHAPE.describe())
    assert table[2].startswith("| configuration | peak allocated |") and len(table) == 4 + len(CONFIGS)


def test_parameters_and_adam_state_match_the_architecture(result):
    rows = {row["config"]: row for row in result["rows"]}
    parameters = FP32 * parameter_count(SHAPE)
    assert {row["parameters"] for row in rows.values()} == {parameters}
    assert rows["plain"]["adam"] == 2 * parameters == rows["plain"]["expected"]["adam"]
    # each rank steps its shard of the buffers (padded to a multiple of DP): about half
    assert rows["distopt"]["adam"] == pytest.approx(2 * parameters / DATA_PARALLEL, rel=0.01)


def test_recomputation_lowers_the_peak(result):
    """Margins of 0.4 MiB (selective) and 2.3 MiB (full) here, against peaks that vary by about 1 KB from
    run to run. (Not so the distributed optimizer's peak: at this size Adam's half is 0.8 MiB, and its
    runs' peaks sometimes hold a further 0.8 MiB, about one parameter buffer; its state is checked above.)"""
    peak = {row["config"]: row["peak allocated"] for row in result["rows"]}
    assert peak["full"] < peak["selective"] < peak["plain"]

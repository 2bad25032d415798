"""A DWM run against its baseline: evaluation curves from metrics, tokens to reach a loss, the plot."""

from __future__ import annotations

import pytest

import json
import statistics
import subprocess
import sys
from pathlib import Path

from megatron_dwm.analysis.comparison import Curve, SeedResult, compare, format_comparison, format_seed_table, \
    mean_difference, mean_domain_weights, plot_comparison, plot_seeds, smoothed, tokens_to_reach, validation_curve

REPO = Path(__file__).resolve().parents[2]


def _records(losses: dict[int, float]) -> list[dict]:
    records = []
    for iteration, loss in losses.items():
        records += [{"iteration": iteration, "lm loss": 9.0}, {"iteration": iteration, "dwm-valid loss": loss}]
    return records


def test_curve_takes_evaluations_only_and_the_last_record_of_a_repeated_iteration():
    records = _records({10: 5.0, 20: 4.0}) + [{"iteration": 20, "dwm-valid loss": 3.5}]  # a resumed run
    curve = validation_curve(records, tokens_per_iteration=100)
    assert curve == Curve([1000, 2000], [5.0, 3.5])


def test_curve_without_evaluations_is_refused():
    with pytest.raises(ValueError, match="dwm-valid loss"):
        validation_curve([{"iteration": 1, "lm loss": 3.0}], 100)


def test_tokens_to_reach_interpolates_between_evaluations():
    curve = Curve([100, 200, 300], [5.0, 4.0, 2.0])
    assert tokens_to_reach(curve, 5.5) == 100.0  # already at the first evaluation
    assert tokens_to_reach(curve, 3.0) == pytest.approx(250.0)  # half-way from 4.0 (200) to 2.0 (300)
    assert tokens_to_reach(curve, 1.0) is None


def test_compare_reports_the_baseline_at_equal_tokens_and_the_tokens_it_needs(tmp_path):
    dwm = Curve([100, 200], [4.5, 3.0])
    baseline = Curve([100, 200, 300, 400], [4.6, 3.6, 3.2, 2.8])
    comparison = compare(dwm, baseline)
    assert comparison.baseline_loss_at_same_tokens == 3.6
    assert comparison.baseline_tokens_to_match == pytest.approx(350.0)
    assert comparison.token_ratio == pytest.approx(1.75)
    assert "(1.75x)" in format_comparison(comparison)
    path = plot_comparison(dwm, baseline, comparison, tmp_path / "comparison.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    never = compare(Curve([100], [1.0]), baseline)
    assert never.baseline_tokens_to_match is None and "not reached" in format_comparison(never)


def test_smoothed_comparison_uses_trailing_means(tmp_path):
    assert smoothed(Curve([1, 2, 3, 4], [4.0, 2.0, 6.0, 0.0]), 2) == Curve([1, 2, 3, 4], [4.0, 3.0, 4.0, 3.0])
    dwm = Curve([100, 200, 300], [5.0, 3.0, 3.0])  # trailing means of 2: 5, 4, 3
    baseline = Curve([100, 200, 300, 400, 500], [5.0, 5.0, 3.0, 4.0, 2.0])  # 5, 5, 4, 3.5, 3
    comparison = compare(dwm, baseline, window=2)
    assert comparison.dwm_final_loss == 3.0 and comparison.baseline_loss_at_same_tokens == 4.0
    assert comparison.baseline_tokens_to_match == 500.0
    plot_comparison(dwm, baseline, comparison, tmp_path / "c.png", window=2)
    assert (tmp_path / "c.png").stat().st_size > 0


def test_mean_difference_over_the_shared_evaluations_after_a_point():
    dwm = Curve([100, 200, 300, 400], [5.0, 4.0, 3.0, 2.5])
    baseline = Curve([100, 200, 400, 500], [5.5, 4.5, 3.0, 2.0])  # no evaluation at 300
    assert mean_difference(dwm, baseline) == pytest.approx((-0.5 - 0.5 - 0.5) / 3)
    assert mean_difference(dwm, baseline, after_tokens=200) == pytest.approx(-0.5)  # only 400 is shared
    assert mean_difference(dwm, baseline, after_tokens=400) is None


def test_mean_domain_weights_average_the_logged_weights_after_an_iteration():
    records = [{"iteration": i, "dwm/weight/A": a, "dwm/weight/B": b, "lm loss": 3.0}
               for i, a, b in ((10, 2.0, 0.0), (20, 0.5, 1.5), (30, 0.7, 1.3))]
    records.append({"iteration": 30, "dwm-valid loss": 4.0})
    assert mean_domain_weights(records, after_iteration=10) == pytest.approx({"A": 0.6, "B": 1.4})
    assert mean_domain_weights(records, after_iteration=30) == {}


def _seed(seed: str, difference: float, weights: dict[str, float]) -> SeedResult:
    return SeedResult(seed, compare(Curve([100], [4.0]), Curve([100, 200], [4.2, 3.9])), difference, weights)


def test_seed_table_gives_each_seed_and_the_spread_over_seeds(tmp_path):
    results = [_seed("1", -0.1, {"A": 0.5, "B": 1.5}), _seed("2", 0.05, {"A": 0.8}), _seed("3", -0.04, {"B": 1.1})]
    table = format_seed_table(results, weights_after=600)
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| seed")]
    assert rows[1:] == ["| 1 | 4.000 / 4.200 | -0.100 | 1.67x | 0.50, 1.50 |",
                        "| 2 | 4.000 / 4.200 | +0.050 | 1.67x | 0.80, - |",
                        "| 3 | 4.000 / 4.200 | -0.040 | 1.67x | -, 1.10 |"]
    assert "after iteration 600: A, B" in table
    spread = statistics.stdev([-0.1, 0.05, -0.04])
    assert f"mean -0.030, standard deviation {spread:.3f}; lower in 2 of 3" in table
    path = plot_seeds(results, tmp_path / "seeds.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _write_run(run: Path, kind: str, losses: dict[int, float], weights: dict[int, float] | None = None) -> None:
    (run / kind).mkdir(parents=True)
    with open(run / kind / "metrics.jsonl", "w") as f:
        for iteration, loss in losses.items():
            if weights:
                f.write(json.dumps({"iteration": iteration, "lm loss": 5.0, "dwm/weight/spam": weights[iteration],
                                    "dwm/weight/book": 2 - weights[iteration]}) + "\n")
            f.write(json.dumps({"iteration": iteration, "dwm-valid loss": loss}) + "\n")


def test_seeds_script_summarises_experiment_directories(tmp_path):
    iterations = [20, 40, 60, 80]
    for seed, shift in (("11", -0.2), ("12", 0.1)):
        run = tmp_path / "runs" / seed
        _write_run(run, "baseline", {i: 8.0 - i / 20 for i in iterations + [100, 120]})
        _write_run(run, "dwm", {i: 8.0 - i / 20 + shift for i in iterations}, {i: 1 - i / 100 for i in iterations})
    result = subprocess.run([sys.executable, str(REPO / "examples" / "dwm_demo_seeds.py"),
                             str(tmp_path / "runs" / "11"), str(tmp_path / "runs" / "12"), "--out", str(tmp_path / "out"),
                             "--window", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "out" / "seeds.md").read_text()
    assert "| 11 | 3.800 / 4.000 | -0.200 |" in table and "| 12 | 4.100 / 4.000 | +0.100 |" in table
    assert "after iteration 60: book, spam" in table and "| 1.80, 0.20 |" in table  # iteration 80 only
    assert "mean -0.050" in table and "lower in 1 of 2" in table
    assert (tmp_path / "out" / "seeds.png").stat().st_size > 0
    missing = subprocess.run([sys.executable, str(REPO / "examples" / "dwm_demo_seeds.py"), str(tmp_path / "none"),
                              "--out", str(tmp_path / "out2")], capture_output=True, text=True, cwd=tmp_path)
    assert missing.returncode == 2 and "none" in missing.stderr and not (tmp_path / "out2").exists()

"""A DWM run against its baseline: evaluation curves from metrics, tokens to reach a loss, the plot."""

from __future__ import annotations

import pytest

from megatron_dwm.analysis.comparison import Curve, compare, format_comparison, plot_comparison, smoothed, \
    tokens_to_reach, validation_curve


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

"""DWM run analysis: reading the trainer's logs, per-stage statistics, correlations, figures, CLI."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from PIL import Image

from megatron_dwm.analysis import run_files, run_schedule, sample_stats
from megatron_dwm.analysis.run_files import AnalysisError
from megatron_dwm.analysis.series import domain_weight_series
from tools.analyze_dwm import main

DOMAINS = ["A", "B"]
STAGE_OF = {i: 0 if i <= 50 else 1 for i in range(10, 101, 10)}  # stage 1 starts at iteration 60
PHASE_ITERATIONS = {10, 20, 60, 70}  # the DWM is trained for the first two logs of each stage


def _batch(iteration: int) -> dict:
    """8 samples, 4 per domain; A weighs ~0.5 in stage 0 and ~1.5 in stage 1, B the converse."""
    stage = STAGE_OF[iteration]
    spread = [-0.1, 0.0, 0.1, 0.02 * (iteration // 10)]
    low, high = [0.5 + s for s in spread], [1.5 - s for s in spread]
    a, b = (low, high) if stage == 0 else (high, low)
    return {"iteration": iteration, "stage": stage, "domain": ["A"] * 4 + ["B"] * 4,
            "document_id": [iteration * 100 + j for j in range(8)], "weight": a + b}


def _metric(iteration: int, shift: float = 0.0) -> dict:
    a = 0.5 if STAGE_OF[iteration] == 0 else 1.5
    return {"iteration": iteration, "lm loss": 3.0, "dwm/stage": STAGE_OF[iteration],
            "dwm/phase": int(iteration in PHASE_ITERATIONS), "dwm/weight/A": a + shift,
            "dwm/weight/B": 2.0 - a - shift, "dwm/ess": 0.9}


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run resumed at iteration 50: iterations 60 and 70 were logged twice, the last is kept."""
    run = tmp_path / "run"
    run.mkdir()
    first = [_metric(i, shift=0.25 if i > 50 else 0.0) for i in range(10, 71, 10)]
    _write_jsonl(run / "metrics.jsonl", first + [_metric(i) for i in range(60, 101, 10)])
    stale = [dict(_batch(i), weight=[9.0] * 8) for i in (60, 70)]
    batches = [_batch(i) for i in range(10, 51, 10)] + stale + [_batch(i) for i in range(60, 101, 10)]
    _write_jsonl(run / "dwm_samples.jsonl", batches)
    return run


def _scores() -> list[dict]:
    """`quality` is linear in the weight in stage 1 (correlation 1) and unrelated in stage 0;
    `style` is missing for half the documents; the documents of iteration 100 have no scores."""
    rows = []
    for iteration in range(10, 91, 10):
        batch = _batch(iteration)
        for j, (doc, weight) in enumerate(zip(batch["document_id"], batch["weight"])):
            quality = 2 * weight + 1 if batch["stage"] == 1 else (j * 7 + iteration) % 5
            rows.append({"domain": batch["domain"][j], "document_id": doc, "quality": quality,
                         "style": (j % 3) * 1.0 - weight if j % 2 == 0 else None})
    return rows


def _write_scores_csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["domain", "document_id", "quality", "style"])
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in _scores())
    return path


def test_metrics_keep_last_record_of_a_repeated_iteration(run_dir):
    records = run_files.load_metrics(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in records] == list(range(10, 101, 10))
    assert [r["dwm/weight/A"] for r in records] == [0.5] * 5 + [1.5] * 5  # not the stale 1.75
    batches = run_files.load_samples(run_dir / "dwm_samples.jsonl")
    assert [b.iteration for b in batches] == list(range(10, 101, 10))
    assert all(9.0 not in b.weight for b in batches)


def test_metrics_merge_the_training_and_evaluation_records_of_an_iteration(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"iteration": 10, "lm loss": 5.0, "dwm/weight/A": 0.5},
        {"iteration": 20, "lm loss": 4.0, "dwm/weight/A": 0.6},
        {"iteration": 20, "dwm-valid loss": 4.5},  # the evaluation at iteration 20
        {"iteration": 20, "lm loss": 3.9, "dwm/weight/A": 0.7},  # logged again after a resume
    ]) + "\n")
    assert run_files.load_metrics(path) == [
        {"iteration": 10, "lm loss": 5.0, "dwm/weight/A": 0.5},
        {"iteration": 20, "lm loss": 3.9, "dwm/weight/A": 0.7, "dwm-valid loss": 4.5},
    ]


def test_stage_boundaries_phase_spans_and_domain_series(run_dir):
    records = run_files.load_metrics(run_dir / "metrics.jsonl")
    assert run_schedule.stage_boundaries(records) == [60]
    assert run_schedule.stage_boundaries([{"iteration": 1, "dwm/stage": 0}, {"iteration": 2},
                                      {"iteration": 3, "dwm/stage": 2}, {"iteration": 4, "dwm/stage": 2}]) == [3]
    # A span runs from its first phase-1 record to the next phase-0 record (or the last record).
    assert run_schedule.dwm_phase_spans(records) == [(10, 30), (60, 80)]
    assert run_schedule.dwm_phase_spans(records[:7]) == [(10, 30), (60, 70)]
    series = domain_weight_series(records)
    assert list(series) == DOMAINS
    assert series["B"] == (list(range(10, 101, 10)), [1.5] * 5 + [0.5] * 5)


def test_stage_domain_means_equal_independent_means(run_dir):
    means = sample_stats.stage_domain_means(run_files.load_samples(run_dir / "dwm_samples.jsonl"))
    for stage in (0, 1):
        batches = [_batch(i) for i in STAGE_OF if STAGE_OF[i] == stage]
        for domain in DOMAINS:
            weights = [w for b in batches for d, w in zip(b["domain"], b["weight"]) if d == domain]
            mean, count = means[stage][domain]
            assert count == len(weights) == 20
            assert mean == pytest.approx(statistics.fmean(weights), abs=1e-12)
    assert means[0]["A"][0] == pytest.approx(0.5 + 0.02 * 3 / 4, abs=1e-12)
    assert means[1]["A"][0] == pytest.approx(1.5 - 0.02 * 8 / 4, abs=1e-12)


def test_correlations_equal_independent_values(run_dir, tmp_path):
    batches = run_files.load_samples(run_dir / "dwm_samples.jsonl")
    columns, scores = run_files.load_scores(_write_scores_csv(tmp_path / "scores.csv"))
    assert columns == ["quality", "style"]
    rows = {(r.stage, r.score): r for r in sample_stats.score_correlations(batches, columns, scores)}
    assert rows[1, "quality"].pearson == pytest.approx(1.0) and rows[1, "quality"].spearman == pytest.approx(1.0)
    by_doc = {(s["domain"], s["document_id"]): s for s in _scores()}
    for (stage, column), row in rows.items():
        pairs = [(w, by_doc[d, i][column]) for b in map(_batch, STAGE_OF) if b["stage"] == stage
                 for d, i, w in zip(b["domain"], b["document_id"], b["weight"])
                 if (d, i) in by_doc and by_doc[d, i][column] is not None]
        x, y = [p[0] for p in pairs], [p[1] for p in pairs]
        assert (row.samples, row.matched) == (40, len(pairs))
        assert row.pearson == pytest.approx(statistics.correlation(x, y), abs=1e-12)
        assert row.spearman == pytest.approx(statistics.correlation(x, y, method="ranked"), abs=1e-12)
    assert rows[1, "quality"].matched == 32 and rows[1, "style"].matched == 16  # iteration 100 unscored


def test_spearman_averages_tied_ranks():
    x, y = [1.0, 2.0, 2.0, 3.0, 5.0, 5.0, 5.0], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    assert list(sample_stats.average_ranks(x)) == [1.0, 2.5, 2.5, 4.0, 6.0, 6.0, 6.0]
    assert sample_stats.spearman(x, y) == pytest.approx(statistics.correlation(x, y, method="ranked"), abs=1e-12)
    assert sample_stats.pearson([1.0, 1.0], [2.0, 3.0]) != sample_stats.pearson([1.0, 1.0], [2.0, 3.0])  # NaN


def test_json_lines_scores_equal_csv_scores(tmp_path):
    jsonl = _write_jsonl(tmp_path / "scores.jsonl", _scores())
    from_csv = run_files.load_scores(_write_scores_csv(tmp_path / "scores.csv"))
    from_jsonl = run_files.load_scores(jsonl)
    assert from_jsonl[0] == from_csv[0] == ["quality", "style"]
    assert repr(from_jsonl[1]) == repr(from_csv[1])  # equal, NaN (missing `style`) included
    assert len(from_csv[1]) == 72 and from_csv[1]["B", 1005]["quality"] == (10 + 5 * 7) % 5


@pytest.mark.parametrize("line, message", [
    ({"iteration": 30, "stage": 0, "domain": ["A", "B"], "document_id": [1, 2], "weight": [1.0]},
     "lists differ in length (domain 2, document_id 2, weight 1)"),
    ({"iteration": 30, "domain": [], "document_id": [], "weight": []}, "'stage'"),
    ({"iteration": 30, "stage": 0, "domain": ["A"], "document_id": [1], "weight": ["x"]}, "'weight'"),
    ("{not json", "invalid JSON"),
])
def test_malformed_samples_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "dwm_samples.jsonl"
    bad = line if isinstance(line, str) else json.dumps(line)
    path.write_text(json.dumps(_batch(10)) + "\n\n" + bad + "\n" + json.dumps(_batch(20)) + "\n")
    with pytest.raises(AnalysisError, match=f"dwm_samples.jsonl:3: .*{message[:12]}") as error:
        run_files.load_samples(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_samples_line_cut_off_by_a_killed_run_is_skipped(tmp_path):
    path = tmp_path / "dwm_samples.jsonl"
    path.write_text(json.dumps(_batch(10)) + "\n" + json.dumps(_batch(20))[:25])
    assert [b.iteration for b in run_files.load_samples(path)] == [10]


def test_malformed_metrics_and_scores_lines_name_file_and_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"iteration": 1}\n{"iteration": 2,\n{"iteration": 3}\n')
    with pytest.raises(AnalysisError, match=r"metrics.jsonl:2: invalid JSON"):
        run_files.load_metrics(metrics)
    metrics.write_text('{"iteration": 1}\n{"lm loss": 2.0}\n')
    with pytest.raises(AnalysisError, match=r"metrics.jsonl:2: missing or non-integer 'iteration'"):
        run_files.load_metrics(metrics)
    scores = tmp_path / "scores.csv"
    scores.write_text("domain,document_id,quality\nA,1,0.5\nA,2,high\n")
    with pytest.raises(AnalysisError, match=r"scores.csv:3: "):
        run_files.load_scores(scores)
    scores.write_text("domain,document_id,quality\nA,1,0.5\nA,1,0.7\n")
    with pytest.raises(AnalysisError, match=r"scores.csv:3: document \('A', 1\) scored twice"):
        run_files.load_scores(scores)


def _assert_png(path: Path) -> None:
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not blank


def test_cli_writes_figures_csv_and_summary(run_dir, tmp_path, capsys):
    scores = _write_scores_csv(tmp_path / "scores.csv")
    assert main([str(run_dir), "--scores", str(scores), "--log-y"]) == 0
    out = run_dir / "analysis"
    names = ["domain_weights.png", "loss_curves.png", "score_correlations.csv", "score_correlations.png",
             "weight_histograms.png"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind
    for name in names:
        if name.endswith(".png"):
            _assert_png(out / name)
    with open(out / "score_correlations.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["stage"], r["score"], r["matched"]) for r in table] == [
        ("0", "quality", "40"), ("0", "style", "20"), ("1", "quality", "32"), ("1", "style", "16")]
    assert float(table[2]["pearson"]) == pytest.approx(1.0)
    summary = capsys.readouterr().out
    assert "DWM: on" in summary and "final training loss (lm loss): 3.000000 at iteration 100" in summary
    assert "stage boundaries (iterations): 60 (inferred" in summary  # no schedule record: from the logs
    assert "stage 0: 40 samples" in summary and "stage 1: 40 samples" in summary
    assert "mean weight   0.5150  samples 20" in summary  # domain A, stage 0
    assert "32/40" in summary


def test_cli_explicit_paths_and_no_scores(run_dir, tmp_path, capsys):
    out = tmp_path / "nested" / "figures"
    samples = run_dir / "dwm_samples.jsonl"
    moved = samples.rename(tmp_path / "weights.jsonl")
    assert main([str(run_dir), "--samples", str(moved), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["domain_weights.png", "loss_curves.png", "weight_histograms.png"]
    assert "pearson" not in capsys.readouterr().out


def test_cli_reports_missing_run_dir_and_files(tmp_path, capsys):
    assert main([str(tmp_path / "absent")]) == 1
    assert f"{tmp_path / 'absent'}: not found (expected a run directory" in capsys.readouterr().err
    _write_jsonl(tmp_path / "metrics.jsonl", [_metric(10)])  # DWM scalars, but no samples file
    assert main([str(tmp_path)]) == 1
    assert f"{tmp_path / 'dwm_samples.jsonl'}: file not found (the metrics hold DWM scalars" in capsys.readouterr().err
    assert main([str(tmp_path), "--samples", str(tmp_path / "weights.jsonl")]) == 1
    assert f"--samples {tmp_path / 'weights.jsonl'}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()


def test_cli_bad_scores_file_fails_before_writing_anything(run_dir, tmp_path, capsys):
    scores = tmp_path / "scores.jsonl"
    scores.write_text('{"domain": "A", "document_id": 1010, "quality": 0.3}\n{"domain": "A", "quality": 1}\n')
    assert main([str(run_dir), "--scores", str(scores)]) == 1
    assert f"{scores}:2: needs 'domain', 'document_id'" in capsys.readouterr().err
    assert not (run_dir / "analysis").exists()


def test_help_documents_outputs(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for word in ("RUN", "TensorBoard directory", "loss_curves.png", "--metrics", "--samples", "--scores", "--out",
                 "--log-y", "score_correlations.csv"):
        assert word in text

"""tools/analyze_dwm.py on what a user names (a run directory, its TensorBoard directory, the
metrics file) and on a run without the DWM: loss curves and a summary saying the DWM was off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from megatron_dwm.analysis import run_plots
from tools.analyze_dwm import main

ITERATIONS = range(10, 51, 10)
EVALUATIONS = (20, 40, 50)  # every 20 iterations, and at the end
DWM_OUTPUTS = ["domain_weights.png", "loss_curves.png", "weight_histograms.png"]


def _training(iteration: int) -> dict[str, Any]:
    return {"iteration": iteration, "lm loss": 6.0 - iteration / 25, "lm loss/A": 6.2 - iteration / 25,
            "lm loss/B": 5.8 - iteration / 30, "learning rate": 1e-3}


def _evaluation(iteration: int) -> dict[str, Any]:
    valid, target = 6.1 - iteration / 30, 6.4 - iteration / 40
    return {"iteration": iteration, "lm loss validation": valid, "lm loss validation ppl": 2.0 ** valid,
            "lm loss validation/A": valid + 0.1, "lm loss validation/B": valid - 0.1, "dwm-valid loss": target,
            "dwm-valid loss ppl": 2.0 ** target}


def _uniform_records() -> list[dict[str, Any]]:
    """What a --dwm-disable run logs: training records, evaluations in records of their own."""
    records = []
    for iteration in ITERATIONS:
        records.append(_training(iteration))
        if iteration in EVALUATIONS:
            records.append(_evaluation(iteration))
    return records


def _dwm_records() -> list[dict[str, Any]]:
    """A DWM run: one stage, a DWM phase over the first 20 iterations (the schedule in the first record)."""
    records = [dict(r, **{"dwm/stage": 0, "dwm/phase": int(r["iteration"] <= 20), "dwm/weight/A": 0.8,
                          "dwm/weight/B": 1.2}) if "lm loss" in r else r for r in _uniform_records()]
    records[0].update({"dwm/schedule/train iters": 50, "dwm/schedule/stages": 1, "dwm/schedule/stage length": 50,
                       "dwm/schedule/update iters": 20, "dwm/schedule/update interval": 1,
                       "dwm/schedule/frozen": 0})
    return records


def _samples() -> list[dict[str, Any]]:
    return [{"iteration": i, "stage": 0, "domain": ["A", "A", "B", "B"], "document_id": [i, i + 1, i, i + 1],
             "weight": [0.7, 0.9, 1.1, 1.3]} for i in ITERATIONS]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _dwm_run(run: Path) -> Path:
    """runs/demo launched with --tensorboard-dir runs/demo/tensorboard: the logs are in there."""
    tensorboard = run / "tensorboard"
    _write_jsonl(tensorboard / "metrics.jsonl", _dwm_records())
    _write_jsonl(tensorboard / "dwm_samples.jsonl", _samples())
    (tensorboard / "events.out.tfevents.0.host").write_bytes(b"")  # TensorBoard's own file, ignored
    return tensorboard


def _assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300
        assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10  # not blank


@pytest.mark.parametrize("named, out", [
    ("run", "run/analysis"),  # the directory named
    ("run/tensorboard", "run/tensorboard/analysis"),
    ("run/tensorboard/metrics.jsonl", "run/tensorboard/analysis"),  # beside the file named
])
def test_every_path_form_finds_metrics_and_samples(tmp_path, capsys, named, out):
    _dwm_run(tmp_path / "run")
    assert main([str(tmp_path / named)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / out).iterdir()) == DWM_OUTPUTS
    summary = capsys.readouterr().out
    assert "DWM: on" in summary
    assert "stage 0: 20 samples" in summary  # dwm_samples.jsonl beside metrics.jsonl was read
    assert "DWM phases (iterations): 0-20" in summary  # the schedule record, not the logged 10-30


def test_uniform_run_gets_loss_curves_and_a_summary_saying_the_dwm_was_off(tmp_path, capsys):
    records = _uniform_records()
    metrics = _write_jsonl(tmp_path / "run" / "tensorboard" / "metrics.jsonl", records)
    assert main([str(tmp_path / "run")]) == 0, capsys.readouterr().err
    out = tmp_path / "run" / "analysis"
    assert [p.name for p in out.iterdir()] == ["loss_curves.png"]
    _assert_png(out / "loss_curves.png")
    summary = capsys.readouterr().out
    assert "DWM: off" in summary and "dwm/" not in summary.split("\n", 1)[1]
    last_training = [r for r in records if "lm loss" in r][-1]
    last_target = [r for r in records if "dwm-valid loss" in r][-1]
    assert (f"final training loss (lm loss): {last_training['lm loss']:.6f} at iteration "
            f"{last_training['iteration']}") in summary
    assert (f"final target loss (dwm-valid loss): {last_target['dwm-valid loss']:.6f} at iteration "
            f"{last_target['iteration']}") in summary
    assert not (metrics.parent / "analysis").exists()


def test_loss_curves_plot_training_domain_and_validation_losses(monkeypatch):
    figures = []
    monkeypatch.setattr(run_plots, "save_figure", lambda figure, path: figures.append(figure) or path)
    run_plots.plot_loss_curves(_merged(_uniform_records()), "unused.png")
    training, validation = figures[0].axes
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in training.lines}
    for key, label in (("lm loss", "lm loss"), ("lm loss/A", "A"), ("lm loss/B", "B")):
        assert curves[label] == (list(ITERATIONS), [_training(i)[key] for i in ITERATIONS])
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in validation.lines}
    valid = [_evaluation(i)["lm loss validation"] for i in EVALUATIONS]
    assert curves["lm loss validation"] == (list(EVALUATIONS), valid)
    assert curves["dwm-valid loss (the DWM's target)"][1] == [_evaluation(i)["dwm-valid loss"] for i in EVALUATIONS]
    assert {"A", "B"} <= set(curves)


def _merged(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per iteration, as load_metrics returns them."""
    by_iteration: dict[int, dict[str, Any]] = {}
    for record in records:
        by_iteration.setdefault(record["iteration"], {}).update(record)
    return list(by_iteration.values())


def test_uniform_run_refuses_scores(tmp_path, capsys):
    _write_jsonl(tmp_path / "metrics.jsonl", _uniform_records())
    scores = _write_jsonl(tmp_path / "scores.jsonl", [{"domain": "A", "document_id": 10, "quality": 1.0}])
    assert main([str(tmp_path), "--scores", str(scores)]) == 1
    assert "run without the DWM" in capsys.readouterr().err
    assert not (tmp_path / "analysis").exists()


def test_metrics_override_needs_no_run(tmp_path, capsys):
    metrics = _write_jsonl(tmp_path / "logs" / "m.jsonl", _uniform_records())
    assert main(["--metrics", str(metrics)]) == 0, capsys.readouterr().err
    assert (tmp_path / "logs" / "analysis" / "loss_curves.png").is_file()


def test_nothing_found_names_what_was_searched(tmp_path, capsys):
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    assert main([str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    for searched in ("run/metrics.jsonl", "run/tensorboard/metrics.jsonl", "run/*/metrics.jsonl"):
        assert str(tmp_path / searched) in error
    assert "--metrics PATH" in error


def test_several_metrics_files_are_not_guessed_between(tmp_path, capsys):
    for name in ("first", "second"):
        _write_jsonl(tmp_path / "run" / name / "metrics.jsonl", _uniform_records())
    assert main([str(tmp_path / "run")]) == 1
    error = capsys.readouterr().err
    assert "several metrics files" in error and str(tmp_path / "run" / "second" / "metrics.jsonl") in error

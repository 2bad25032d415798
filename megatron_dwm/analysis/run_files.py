"""A run's log files: where they are, and reading and validating them.

The trainer writes metrics to --metrics-file, else to --tensorboard-dir/metrics.jsonl, else to
--save/metrics.jsonl, and the DWM's per-sample weights to dwm_samples.jsonl in the same directory. A
user may name the run directory (which holds the TensorBoard or checkpoint directory), that
directory itself, or the metrics file: :func:`run_files` accepts all three. The readers check every
line and name the file and line of what is malformed; document scores are a CSV or JSON lines file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_dwm.training.metrics import METRICS_FILE, SAMPLES_FILE, read_metrics
ANALYSIS_DIR = "analysis"
WHAT_TO_NAME = "a run directory, its TensorBoard directory or its metrics.jsonl"


class AnalysisError(ValueError):
    """A missing or malformed input; the message names the file (and line)."""


@dataclass(frozen=True)
class RunFiles:
    """The inputs and the output directory of one analysis."""

    metrics: Path
    samples: Path  # may be absent: a run without the DWM writes none
    out: Path


@dataclass
class SampleBatch:
    """One line of dwm_samples.jsonl: the weights of one global batch."""

    iteration: int
    stage: int
    domain: list[str]
    document_id: list[int]
    weight: list[float]


# ---------------------------------------------------------------- locating

def find_metrics(path: Path) -> Path:
    """`path` if it is a file; else PATH/metrics.jsonl, PATH/tensorboard/metrics.jsonl, or the one
    PATH/*/metrics.jsonl. Raises AnalysisError naming what was searched when there is none."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise AnalysisError(f"{path}: not found (expected {WHAT_TO_NAME})")
    for candidate in (path / METRICS_FILE, path / "tensorboard" / METRICS_FILE):
        if candidate.is_file():
            return candidate
    found = sorted(p for p in path.glob(f"*/{METRICS_FILE}") if p.is_file())
    if len(found) > 1:
        raise AnalysisError(f"{path}: several metrics files ({', '.join(map(str, found))}); name the one to "
                            "analyse, or pass --metrics PATH")
    if not found:
        searched = ", ".join(str(p) for p in (path / METRICS_FILE, path / "tensorboard" / METRICS_FILE,
                                              path / "*" / METRICS_FILE))
        raise AnalysisError(f"{path}: no {METRICS_FILE} found (searched {searched}); name {WHAT_TO_NAME} "
                            "(the trainer's --metrics-file, else --tensorboard-dir or --save holds it), "
                            "or pass --metrics PATH")
    return found[0]


def run_files(run: Path | None = None, metrics: Path | None = None, samples: Path | None = None,
              out: Path | None = None) -> RunFiles:
    """The metrics file (--metrics, else found from `run`), the samples file (--samples, else beside
    the metrics file, as the trainer writes it) and the output directory (--out, else `run`/analysis
    when `run` is a directory, else analysis/ beside the metrics file)."""
    if run is None and metrics is None:
        raise AnalysisError(f"name {WHAT_TO_NAME}, or pass --metrics PATH")
    if run is not None and not run.exists():
        raise AnalysisError(f"{run}: not found (expected {WHAT_TO_NAME})")
    for flag, path in (("--metrics", metrics), ("--samples", samples)):
        if path is not None and not path.is_file():
            raise AnalysisError(f"{flag} {path}: file not found")
    metrics = metrics or find_metrics(run)
    default_out = run / ANALYSIS_DIR if run is not None and run.is_dir() else metrics.parent / ANALYSIS_DIR
    return RunFiles(metrics, samples or metrics.parent / SAMPLES_FILE, out or default_out)


# ---------------------------------------------------------------- reading

def is_int(value: Any) -> bool:
    """Whether `value` is a JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise AnalysisError(f"{path}: file not found")


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _json_object(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise AnalysisError(f"{path}:{number}: invalid JSON ({error.msg})") from None
    if not isinstance(record, dict):
        raise AnalysisError(f"{path}:{number}: expected a JSON object")
    return record


def load_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """One record per iteration of metrics.jsonl, sorted by iteration.

    The records of an iteration are merged: the trainer logs an evaluation in a record of its own
    beside the training record, and a run resumed from a checkpoint logs some iterations again, whose
    later values win.
    """
    path = Path(path)
    _require_file(path)
    lines = _numbered_lines(path)
    try:
        records = read_metrics(path)
    except (ValueError, AttributeError):  # read_metrics names no line: find it
        for number, line in lines:
            _json_object(path, number, line)
        raise
    by_iteration: dict[int, dict[str, Any]] = {}
    for (number, _), record in zip(lines, records):  # read_metrics keeps one record per line
        if not is_int(record.get("iteration")):
            raise AnalysisError(f"{path}:{number}: missing or non-integer 'iteration'")
        by_iteration.setdefault(record["iteration"], {}).update(record)
    return [by_iteration[i] for i in sorted(by_iteration)]


_SAMPLE_LISTS = {"domain": ("strings", lambda v: isinstance(v, str)), "document_id": ("integers", is_int),
                 "weight": ("numbers", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))}


def _parse_sample_line(path: Path, number: int, line: str) -> SampleBatch:
    record, where = _json_object(path, number, line), f"{path}:{number}"
    for key in ("iteration", "stage"):
        if not is_int(record.get(key)):
            raise AnalysisError(f"{where}: missing or non-integer '{key}'")
    for key, (kind, valid) in _SAMPLE_LISTS.items():
        if not isinstance(record.get(key), list) or not all(map(valid, record[key])):
            raise AnalysisError(f"{where}: '{key}' must be a list of {kind}")
    lengths = {key: len(record[key]) for key in _SAMPLE_LISTS}
    if len(set(lengths.values())) != 1:
        detail = ", ".join(f"{key} {n}" for key, n in lengths.items())
        raise AnalysisError(f"{where}: lists differ in length ({detail})")
    return SampleBatch(record["iteration"], record["stage"], record["domain"], record["document_id"],
                       [float(w) for w in record["weight"]])


def load_samples(path: str | os.PathLike) -> list[SampleBatch]:
    """Batches of dwm_samples.jsonl sorted by iteration, the last line of a repeated iteration kept.

    A last line cut off mid-write (invalid JSON, no newline at the end of the file) is skipped.
    """
    path = Path(path)
    _require_file(path)
    lines = _numbered_lines(path)
    if lines and not path.read_bytes().endswith(b"\n"):
        try:
            json.loads(lines[-1][1])
        except json.JSONDecodeError:
            lines.pop()
    batches = {b.iteration: b for b in (_parse_sample_line(path, n, line) for n, line in lines)}
    return [batches[i] for i in sorted(batches)]


def _score(raw: Any) -> float:
    if isinstance(raw, bool):
        raise ValueError(f"{raw} is not a score")
    return math.nan if raw is None or raw == "" else float(raw)


def _score_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV file with a header row (`.csv`), else of a JSON lines file."""
    if path.suffix.lower() != ".csv":
        return [(number, _json_object(path, number, line)) for number, line in _numbered_lines(path)]
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [(reader.line_num, row) for row in reader]


def load_scores(path: str | os.PathLike) -> tuple[list[str], dict[tuple[str, int], dict[str, float]]]:
    """(score columns, (domain, document_id) -> {column: score}) from a CSV or JSON lines file.

    A file ending in `.csv` is CSV with a header row; anything else is JSON lines. Every column but
    `domain` and `document_id` is a score; an empty cell or null is a missing score.
    """
    path = Path(path)
    _require_file(path)
    columns: list[str] = []
    scores: dict[tuple[str, int], dict[str, float]] = {}
    for number, row in _score_rows(path):
        try:
            key = (str(row["domain"]), int(row["document_id"]))
            values = {k: _score(v) for k, v in row.items() if k not in ("domain", "document_id")}
        except (KeyError, TypeError, ValueError) as error:
            problem = f"needs 'domain', 'document_id' and numeric scores ({error!r})"
            raise AnalysisError(f"{path}:{number}: {problem}") from None
        if key in scores:
            raise AnalysisError(f"{path}:{number}: document {key} scored twice")
        columns += [c for c in values if c not in columns]
        scores[key] = values
    if not columns:
        raise AnalysisError(f"{path}: no score columns besides 'domain' and 'document_id'")
    return columns, scores

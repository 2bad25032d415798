"""Post-hoc analysis of a DWM run: domain weights over time, weight histograms per stage, and the
correlation of sample weights with per-document quality scores (the paper's preference analysis).

Inputs are the trainer's `metrics.jsonl` and `dwm_samples.jsonl` and, optionally, a CSV or JSON
lines file of document scores; `tools/analyze_dwm.py` is the command line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

from megatron_dwm.training.metrics import read_metrics

DOMAIN_WEIGHT_PREFIX = "dwm/weight/"
CORRELATION_FIELDS = ["stage", "score", "samples", "matched", "pearson", "spearman"]


class AnalysisError(ValueError):
    """A missing or malformed input; the message names the file (and line)."""


@dataclass
class SampleBatch:
    """One line of dwm_samples.jsonl: the weights of one global batch."""

    iteration: int
    stage: int
    domain: list[str]
    document_id: list[int]
    weight: list[float]


@dataclass
class Correlation:
    """Correlation of sample weights with one score column over one stage's samples."""

    stage: int
    score: str
    samples: int  # samples of the stage
    matched: int  # of those, samples whose document has this score
    pearson: float
    spearman: float


# ---------------------------------------------------------------- reading

def _require_file(path: Path) -> None:
    if not path.is_file():
        raise AnalysisError(f"{path}: file not found")


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        if not _is_int(record.get("iteration")):
            raise AnalysisError(f"{path}:{number}: missing or non-integer 'iteration'")
        by_iteration.setdefault(record["iteration"], {}).update(record)
    return [by_iteration[i] for i in sorted(by_iteration)]


_SAMPLE_LISTS = {"domain": ("strings", lambda v: isinstance(v, str)), "document_id": ("integers", _is_int),
                 "weight": ("numbers", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))}


def _parse_sample_line(path: Path, number: int, line: str) -> SampleBatch:
    record, where = _json_object(path, number, line), f"{path}:{number}"
    for key in ("iteration", "stage"):
        if not _is_int(record.get(key)):
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


def load_scores(path: str | os.PathLike) -> tuple[list[str], dict[tuple[str, int], dict[str, float]]]:
    """(score columns, (domain, document_id) -> {column: score}) from a CSV or JSON lines file.

    A file ending in `.csv` is CSV with a header row; anything else is JSON lines. Every column but
    `domain` and `document_id` is a score; an empty cell or null is a missing score.
    """
    path = Path(path)
    _require_file(path)
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    else:
        rows = [(number, _json_object(path, number, line)) for number, line in _numbered_lines(path)]
    columns: list[str] = []
    scores: dict[tuple[str, int], dict[str, float]] = {}
    for number, row in rows:
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


# ---------------------------------------------------------------- computing

def stage_boundaries(records: list[dict[str, Any]]) -> list[int]:
    """Iterations whose `dwm/stage` differs from that of the previous record that has one."""
    stages = [(r["iteration"], r["dwm/stage"]) for r in records if "dwm/stage" in r]
    return [iteration for (_, before), (iteration, stage) in zip(stages, stages[1:]) if stage != before]


def dwm_phase_spans(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(start, end) iterations of each run of records with `dwm/phase` 1. A span ends at the next
    record with `dwm/phase` 0 (the switch happened in that log interval), else at the last record."""
    phases = [(r["iteration"], r["dwm/phase"] == 1) for r in records if "dwm/phase" in r]
    spans = []
    for index, (iteration, on) in enumerate(phases):
        if on and (index == 0 or not phases[index - 1][1]):  # a DWM phase starts
            end = next((i for i, later_on in phases[index + 1:] if not later_on), phases[-1][0])
            spans.append((iteration, end))
    return spans


def domain_weight_series(records: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Domain name -> (iterations, mean weights) from the `dwm/weight/<domain>` scalars."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(DOMAIN_WEIGHT_PREFIX):
                iterations, weights = series.setdefault(key[len(DOMAIN_WEIGHT_PREFIX):], ([], []))
                iterations.append(record["iteration"])
                weights.append(float(value))
    return dict(sorted(series.items()))


def stage_weights(batches: list[SampleBatch]) -> dict[int, np.ndarray]:
    """Stage -> every per-sample weight logged in it."""
    stages = sorted({b.stage for b in batches})
    return {s: np.array([w for b in batches if b.stage == s for w in b.weight]) for s in stages}


def stage_domain_means(batches: list[SampleBatch]) -> dict[int, dict[str, tuple[float, int]]]:
    """Stage -> domain -> (mean per-sample weight, number of samples)."""
    groups: dict[int, dict[str, list[float]]] = {}
    for batch in batches:
        for domain, weight in zip(batch.domain, batch.weight):
            groups.setdefault(batch.stage, {}).setdefault(domain, []).append(weight)
    return {stage: {domain: (math.fsum(ws) / len(ws), len(ws)) for domain, ws in sorted(by.items())}
            for stage, by in sorted(groups.items())}


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than two points or a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx @ dy) / math.sqrt((dx @ dx) * (dy @ dy)))


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, group = np.unique(x, return_inverse=True)
    return (np.bincount(group, weights=ranks) / np.bincount(group))[group]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman correlation: Pearson of the average ranks."""
    return pearson(average_ranks(np.asarray(x, float)), average_ranks(np.asarray(y, float)))


def score_correlations(batches: list[SampleBatch], columns: list[str],
                       scores: dict[tuple[str, int], dict[str, float]]) -> list[Correlation]:
    """Per stage and score column, correlations of sample weights with their documents' scores;
    samples whose document has no (finite) score for the column are skipped."""
    rows = []
    for stage in sorted({b.stage for b in batches}):
        samples = [(w, scores.get((d, i), {})) for b in batches if b.stage == stage
                   for d, i, w in zip(b.domain, b.document_id, b.weight)]
        for column in columns:
            pairs = [(w, s[column]) for w, s in samples if math.isfinite(s.get(column, math.nan))]
            weights, values = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
            rows.append(Correlation(stage, column, len(samples), len(pairs),
                                    pearson(weights, values), spearman(weights, values)))
    return rows


# ---------------------------------------------------------------- writing

def _write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through a temporary file beside it, renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def save_figure(figure: Any, path: str | os.PathLike) -> Path:
    """Save a matplotlib figure as PNG (atomically)."""
    return _write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))


def write_correlations_csv(rows: list[Correlation], path: str | os.PathLike) -> Path:
    """The correlation table as CSV (atomically), one row per (stage, score), columns CORRELATION_FIELDS."""
    text = io.StringIO()
    csv.writer(text).writerows([CORRELATION_FIELDS] + [[getattr(r, k) for k in CORRELATION_FIELDS] for r in rows])
    return _write_atomically(path, lambda f: f.write(text.getvalue().encode("utf-8")))


def agg_figure(**kwargs: Any) -> Any:
    """A matplotlib figure drawn by the Agg backend, outside pyplot's global state (nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def plot_domain_weights(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Mean weight per domain vs iteration, stage boundaries dashed, DWM phases shaded."""
    figure = agg_figure(figsize=(10, 5))
    axes = figure.subplots()
    for domain, (iterations, weights) in domain_weight_series(records).items():
        axes.plot(iterations, weights, label=domain, linewidth=1.2)
    for index, (start, end) in enumerate(dwm_phase_spans(records)):
        axes.axvspan(start, end, color="tab:orange", alpha=0.15, label="DWM phase" if index == 0 else None)
    for index, iteration in enumerate(stage_boundaries(records)):
        axes.axvline(iteration, color="black", linestyle="--", linewidth=0.8,
                     label="stage boundary" if index == 0 else None)
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.set(xlabel="iteration", ylabel="mean sample weight", title="DWM weight per domain")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="best")
    return save_figure(figure, path)


def plot_weight_histograms(batches: list[SampleBatch], path: str | os.PathLike,
                           bins: int = 50, log_y: bool = False) -> Path:
    """One histogram of per-sample weights per stage, on a shared x axis."""
    weights = {s: w[np.isfinite(w)] for s, w in stage_weights(batches).items()} or {None: np.array([])}
    figure = agg_figure(figsize=(8, 2.2 * len(weights) + 0.8), layout="tight")
    panels = figure.subplots(len(weights), 1, sharex=True, squeeze=False)
    every = np.concatenate(list(weights.values()))
    edges = np.histogram_bin_edges(every if len(every) else [0.0, 2.0], bins=bins)
    for axes, (stage, values) in zip(panels[:, 0], weights.items()):
        axes.hist(values, bins=edges, log=log_y, color="tab:blue")
        axes.axvline(1.0, color="gray", linewidth=0.8)
        axes.set_title(f"stage {stage}: {len(values)} samples" if stage is not None else "no samples")
        axes.set_ylabel("samples")
    panels[-1, 0].set_xlabel("sample weight")
    return save_figure(figure, path)


def plot_score_correlations(rows: list[Correlation], path: str | os.PathLike) -> Path:
    """Grouped bars: for each score column, one bar per stage; Pearson and Spearman panels."""
    columns = list(dict.fromkeys(r.score for r in rows))
    stages = sorted({r.stage for r in rows})
    width = 0.8 / max(len(stages), 1)
    figure = agg_figure(figsize=(max(8, 2.5 * len(columns)), 4.5), layout="tight")
    panels = figure.subplots(1, 2, sharey=True)
    for axes, method in zip(panels, ("pearson", "spearman")):
        for index, stage in enumerate(stages):
            by_column = {r.score: getattr(r, method) for r in rows if r.stage == stage}
            axes.bar(np.arange(len(columns)) + (index - (len(stages) - 1) / 2) * width,
                     [by_column[c] for c in columns], width, label=f"stage {stage}")
        axes.axhline(0.0, color="gray", linewidth=0.8)
        axes.set_xticks(np.arange(len(columns)), columns, rotation=20, ha="right")
        axes.set_title(method.capitalize())
    panels[0].set_ylabel("correlation of sample weight and document score")
    panels[0].legend(fontsize="small")
    return save_figure(figure, path)


def format_summary(batches: list[SampleBatch], boundaries: list[int],
                   correlations: list[Correlation] | None = None) -> str:
    """Per stage: sample count and mean weight per domain; then the correlation table, if any."""
    lines = [f"stage boundaries (iterations): {', '.join(map(str, boundaries)) or 'none'}"]
    for stage, domains in stage_domain_means(batches).items():
        total = sum(n for _, n in domains.values())
        lines.append(f"stage {stage}: {total} samples")
        lines += [f"  {domain:<24} mean weight {mean:8.4f}  samples {n}" for domain, (mean, n) in domains.items()]
    if correlations is not None:
        lines.append(f"{'stage':>5}  {'score':<24} {'matched':>15}  {'pearson':>8}  {'spearman':>8}")
        lines += [f"{r.stage:>5}  {r.score:<24} {f'{r.matched}/{r.samples}':>15}  "
                  f"{r.pearson:8.4f}  {r.spearman:8.4f}" for r in correlations]
    return "\n".join(lines)


@dataclass
class Analysis:
    """What analyze_run wrote and found: the text summary, the files, the correlation rows."""

    summary: str
    outputs: list[Path]
    correlations: list[Correlation] | None


def analyze_run(metrics_path: str | os.PathLike, samples_path: str | os.PathLike, out_dir: str | os.PathLike,
                scores_path: str | os.PathLike | None = None, bins: int = 50, log_y: bool = False) -> Analysis:
    """Read every input (so a bad one fails before anything is written), then write the figures,
    and with scores the correlation CSV, into `out_dir`."""
    records, batches = load_metrics(metrics_path), load_samples(samples_path)
    correlations = None if scores_path is None else score_correlations(batches, *load_scores(scores_path))
    out = Path(out_dir)
    outputs = [plot_domain_weights(records, out / "domain_weights.png"),
               plot_weight_histograms(batches, out / "weight_histograms.png", bins, log_y)]
    if correlations is not None:
        outputs += [plot_score_correlations(correlations, out / "score_correlations.png"),
                    write_correlations_csv(correlations, out / "score_correlations.csv")]
    return Analysis(format_summary(batches, stage_boundaries(records), correlations), outputs, correlations)

"""Post-hoc analysis of a run: loss curves; with the DWM, domain weights over time, weight
histograms per stage, and the correlation of sample weights with per-document quality scores (the
paper's preference analysis).

Inputs are the trainer's `metrics.jsonl` and `dwm_samples.jsonl` (absent for a run without the DWM)
and, optionally, a CSV or JSON lines file of document scores; `tools/analyze_dwm.py` is the command
line.

Iterations are those of the metrics: the number of steps completed. Stage s of a schedule with
stage length L covers the 0-based steps [s*L, (s+1)*L), logged as iterations s*L + 1 .. (s+1)*L, so
its boundary is drawn at s*L, and a DWM phase of K steps spans [s*L, s*L + K].
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

from megatron_dwm.training.metrics import SCHEDULE_PREFIX, read_metrics

DOMAIN_WEIGHT_PREFIX = "dwm/weight/"
DWM_PREFIX = "dwm/"  # every scalar the DWM logs ("dwm-valid loss" is an evaluation, logged without it too)
TRAIN_LOSS, VALID_LOSS, TARGET_LOSS = "lm loss", "lm loss validation", "dwm-valid loss"
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

def has_dwm(records: list[dict[str, Any]]) -> bool:
    """Whether the run logged any DWM scalar (`dwm/...`); a run with --dwm-disable logs none."""
    return any(key.startswith(DWM_PREFIX) for record in records for key in record)


_SCHEDULE_KEYS = ("train iters", "stages", "update iters", "frozen")


def recorded_schedule(records: list[dict[str, Any]]) -> RecordedSchedule | None:
    """The schedule the run logged with its first record, None if it logged none (an older trainer)."""
    values = {key[len(SCHEDULE_PREFIX):]: value for record in records for key, value in record.items()
              if key.startswith(SCHEDULE_PREFIX)}
    if not values:
        return None
    missing = [SCHEDULE_PREFIX + key for key in _SCHEDULE_KEYS if not _is_int(values.get(key))]
    if missing:
        raise AnalysisError(f"the metrics' schedule record lacks integer {', '.join(missing)}")
    train_iters, stages = values["train iters"], values["stages"]
    if not 1 <= stages <= train_iters:
        raise AnalysisError(f"the metrics' schedule record has {stages} stages in {train_iters} iterations")
    length = values.get("stage length")
    return RecordedSchedule(train_iters, stages, length if _is_int(length) else train_iters // stages,
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


Series = tuple[list[int], list[float]]  # (iterations, values)


def scalar_series(records: list[dict[str, Any]], key: str) -> Series:
    """(iterations, values) of the records that hold `key`."""
    pairs = [(r["iteration"], float(r[key])) for r in records if key in r]
    return [i for i, _ in pairs], [v for _, v in pairs]


def prefixed_series(records: list[dict[str, Any]], prefix: str) -> dict[str, Series]:
    """Name -> (iterations, values) of the `<prefix><name>` scalars, sorted by name."""
    series: dict[str, Series] = {}
    for record in records:
        for key, value in record.items():
            if key.startswith(prefix):
                iterations, values = series.setdefault(key[len(prefix):], ([], []))
                iterations.append(record["iteration"])
                values.append(float(value))
    return dict(sorted(series.items()))


def domain_weight_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """Domain name -> (iterations, mean weights) from the `dwm/weight/<domain>` scalars."""
    return prefixed_series(records, DOMAIN_WEIGHT_PREFIX)


def final_value(records: list[dict[str, Any]], key: str) -> tuple[int, float] | None:
    """(iteration, value) of the last record holding `key`; None if none does."""
    iterations, values = scalar_series(records, key)
    return (iterations[-1], values[-1]) if iterations else None


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

def write_atomically(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
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
    return write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100))


def write_correlations_csv(rows: list[Correlation], path: str | os.PathLike) -> Path:
    """The correlation table as CSV (atomically), one row per (stage, score), columns CORRELATION_FIELDS."""
    text = io.StringIO()
    csv.writer(text).writerows([CORRELATION_FIELDS] + [[getattr(r, k) for k in CORRELATION_FIELDS] for r in rows])
    return write_text_atomically(path, text.getvalue())


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def agg_figure(**kwargs: Any) -> Any:
    """A matplotlib figure drawn by the Agg backend, outside pyplot's global state (nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure


def _draw_stages(axes: Any, records: list[dict[str, Any]]) -> None:
    """DWM phases shaded and stage boundaries dashed, at the iterations of the run's schedule."""
    for index, (start, end) in enumerate(dwm_phase_spans(records)):
        axes.axvspan(start, end, color="tab:orange", alpha=0.15, label="DWM phase" if index == 0 else None)
    for index, iteration in enumerate(stage_boundaries(records)):
        axes.axvline(iteration, color="black", linestyle="--", linewidth=0.8,
                     label="stage boundary" if index == 0 else None)


def _legend(axes: Any) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", loc="best")


def plot_domain_weights(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Mean weight per domain vs iteration, stage boundaries dashed, DWM phases shaded."""
    figure = agg_figure(figsize=(10, 5))
    axes = figure.subplots()
    for domain, (iterations, weights) in domain_weight_series(records).items():
        axes.plot(iterations, weights, label=domain, linewidth=1.2)
    _draw_stages(axes, records)
    axes.axhline(1.0, color="gray", linewidth=0.8)
    axes.set(xlabel="iteration", ylabel="mean sample weight", title="DWM weight per domain")
    _legend(axes)
    return save_figure(figure, path)


def _plot_losses(axes: Any, records: list[dict[str, Any]], total: str, domain_prefix: str,
                 marker: str | None = None) -> None:
    """`total` in black, its `<domain_prefix><domain>` curves thinner, in colour."""
    iterations, values = scalar_series(records, total)
    if iterations:
        axes.plot(iterations, values, color="black", linewidth=1.8, marker=marker, label=total)
    for domain, (iterations, values) in prefixed_series(records, domain_prefix).items():
        axes.plot(iterations, values, linewidth=0.9, marker=marker, markersize=3, label=domain)


def plot_loss_curves(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Training loss (`lm loss` and per domain `lm loss/<domain>`) vs iteration and, when the run
    evaluated, a panel of validation losses (`lm loss validation` and its domains, `dwm-valid loss`,
    the DWM's target); with the DWM, its stages and phases as in :func:`plot_domain_weights`."""
    evaluated = any(VALID_LOSS in r or TARGET_LOSS in r for r in records)
    figure = agg_figure(figsize=(10, 8 if evaluated else 5), layout="tight")
    panels = figure.subplots(2 if evaluated else 1, 1, sharex=True, squeeze=False)[:, 0]
    _plot_losses(panels[0], records, TRAIN_LOSS, f"{TRAIN_LOSS}/")
    panels[0].set(ylabel="loss", title="training loss")
    if evaluated:
        _plot_losses(panels[1], records, VALID_LOSS, f"{VALID_LOSS}/", marker="o")
        iterations, values = scalar_series(records, TARGET_LOSS)
        if iterations:
            panels[1].plot(iterations, values, color="tab:red", linewidth=1.8, marker="s",
                           label=f"{TARGET_LOSS} (the DWM's target)")
        panels[1].set(ylabel="loss", title="validation loss")
    for axes in panels:
        _draw_stages(axes, records)
        _legend(axes)
    panels[-1].set_xlabel("iteration")
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


def _format_final_losses(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for what, key in (("training loss", TRAIN_LOSS), ("validation loss", VALID_LOSS), ("target loss", TARGET_LOSS)):
        final = final_value(records, key)
        lines.append(f"final {what} ({key}): " + (f"{final[1]:.6f} at iteration {final[0]}" if final else "not logged"))
    return lines


def _format_stages(records: list[dict[str, Any]]) -> list[str]:
    schedule = recorded_schedule(records)
    source = ("from the run's schedule" if schedule else
              "inferred from the logged dwm/stage and dwm/phase: up to one log interval late")
    phases = ", ".join(f"{start}-{end}" for start, end in dwm_phase_spans(records))
    return [f"stage boundaries (iterations): {', '.join(map(str, stage_boundaries(records))) or 'none'} ({source})",
            f"DWM phases (iterations): {phases or 'none'}"]


def format_summary(records: list[dict[str, Any]], batches: list[SampleBatch] | None,
                   correlations: list[Correlation] | None = None) -> str:
    """Whether the DWM was on, the final losses; with the DWM, its stages and phases, per stage the
    sample count and mean weight per domain, then the correlation table, if any."""
    if batches is None:
        return "\n".join(["DWM: off (no dwm/ scalars in the metrics, no dwm_samples.jsonl): every sample weighed 1",
                          *_format_final_losses(records)])
    if any("dwm/stage" in record for record in records):  # only the DWM's policy has stages
        lines = ["DWM: on", *_format_final_losses(records), *_format_stages(records)]
    else:
        lines = ["DWM: off; the weights of --weighting uniform, domain or loss (one stage: the whole run)",
                 *_format_final_losses(records)]
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
    dwm: bool  # whether the run had a DWM


def _dwm_samples(records: list[dict[str, Any]], samples_path: str | os.PathLike | None) -> list[SampleBatch] | None:
    """The run's per-sample weights; None for a run without the DWM (no dwm/ scalars, no samples file)."""
    exists = samples_path is not None and Path(samples_path).is_file()
    if not exists and not has_dwm(records):
        return None
    if samples_path is None:
        raise AnalysisError("the metrics hold DWM scalars (dwm/...), so the run had a DWM, but no samples file "
                            "(dwm_samples.jsonl) was given")
    if not exists:
        raise AnalysisError(f"{samples_path}: file not found (the metrics hold DWM scalars, dwm/..., so the run "
                            "had a DWM, which logs its per-sample weights there; pass --samples PATH if elsewhere)")
    return load_samples(samples_path)


def analyze_run(metrics_path: str | os.PathLike, samples_path: str | os.PathLike | None,
                out_dir: str | os.PathLike, scores_path: str | os.PathLike | None = None, bins: int = 50,
                log_y: bool = False) -> Analysis:
    """Read every input (so a bad one fails before anything is written), then write into `out_dir`
    the loss curves and, for a run with the DWM, its figures and with scores the correlation CSV.

    A run without the DWM (no `dwm/...` scalars, no samples file) gets the loss curves only; scores
    need the DWM's sample weights and are refused for it.
    """
    records = load_metrics(metrics_path)
    batches = _dwm_samples(records, samples_path)
    if batches is None and scores_path is not None:
        raise AnalysisError(f"{scores_path}: scores are correlated with the DWM's sample weights, and "
                            f"{metrics_path} is of a run without the DWM")
    correlations = None if scores_path is None else score_correlations(batches, *load_scores(scores_path))
    out = Path(out_dir)
    outputs = [plot_loss_curves(records, out / "loss_curves.png")]
    if batches is not None:
        outputs += [plot_domain_weights(records, out / "domain_weights.png"),
                    plot_weight_histograms(batches, out / "weight_histograms.png", bins, log_y)]
    if correlations is not None:
        outputs += [plot_score_correlations(correlations, out / "score_correlations.png"),
                    write_correlations_csv(correlations, out / "score_correlations.csv")]
    return Analysis(format_summary(records, batches, correlations), outputs, correlations, batches is not None)

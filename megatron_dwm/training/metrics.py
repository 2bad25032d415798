"""Training metrics: TensorBoard scalars, a JSONL log, and Megatron-LM's console line.

One rank writes metrics (the one holding the reduced loss); the others need no writer, or a
`MetricsWriter(None, None)`, which does nothing.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# The run's metrics file (unless --metrics-file names another) and, beside it, the per-sample weights.
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "dwm_samples.jsonl"
# GPU memory high-water mark since the start of the run, logged on GPUs only.
PEAK_MEMORY_METRIC = "max memory allocated (GiB)"
# Scalars measured with the wall clock (or the allocator): the only ones two runs of the same steps
# may disagree on.
WALL_CLOCK_METRICS = frozenset({"elapsed time per iteration (ms)", "throughput per GPU (TFLOP/s/GPU)",
                                "tokens per second", "samples per second", "MFU", "dwm/weights time (ms)",
                                PEAK_MEMORY_METRIC})
# The DWM's stage schedule (megatron_dwm.dwm.schedule.StageSchedule) as scalars: metric name after
# SCHEDULE_PREFIX -> the schedule's attribute. A run logs them once, so that the analysis draws stages
# and DWM phases at their true iterations rather than at the logged ones.
SCHEDULE_PREFIX = "dwm/schedule/"
SCHEDULE_FIELDS = {"train iters": "train_iters", "stages": "stages", "stage length": "stage_length",
                   "update iters": "update_iters", "update interval": "update_interval", "frozen": "frozen"}
# Non-finite floats are not JSON; they are written as these strings and read back as floats.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _json_value(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    value = float(value)  # numpy and 0-d torch scalars as well
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


@dataclass
class DomainTotals:
    """Sums and counts of a per-sample value (a loss, a weight), overall and per domain id
    (``num_domains`` of them; other ids count only overall)."""

    num_domains: int
    sums: torch.Tensor = field(init=False)
    counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.sums = torch.zeros(self.num_domains + 1, dtype=torch.float64)  # last slot: all samples
        self.counts = torch.zeros(self.num_domains + 1, dtype=torch.float64)

    def add(self, values: torch.Tensor, domain_id: torch.Tensor) -> None:
        values, domain_id = values.detach().double().cpu(), domain_id.cpu()
        known = (domain_id >= 0) & (domain_id < self.num_domains)
        self.sums.index_add_(0, domain_id[known], values[known])
        self.counts.index_add_(0, domain_id[known], torch.ones_like(values[known]))
        self.sums[-1] += values.sum()
        self.counts[-1] += values.numel()

    def all_reduce(self, group: dist.ProcessGroup | None, device: torch.device) -> None:
        """Sum over the data-parallel ranks (call on every rank of the last pipeline stage)."""
        packed = torch.cat([self.sums, self.counts]).to(device)
        dist.all_reduce(packed, group=group)
        self.sums, self.counts = packed.cpu().split(self.num_domains + 1)

    def mean(self) -> float:
        return float(self.sums[-1] / self.counts[-1]) if self.counts[-1] > 0 else math.nan

    def domain_means(self, names: list[str]) -> dict[str, float]:
        return {name: float(self.sums[i] / self.counts[i]) for i, name in enumerate(names) if self.counts[i] > 0}


class MetricsWriter:
    """Writes each iteration's scalars to TensorBoard and/or as one line of a JSONL file.

    JSONL lines are `{"iteration": i, **scalars}`, floats in full precision (they read back
    bit-exactly), NaN and +-Inf as the strings "NaN", "Infinity", "-Infinity". Every line is
    flushed; TensorBoard events are flushed on SummaryWriter's schedule (2 min) and by close(). An
    existing file is appended to (a resumed run); a partial last line left by a killed run is cut
    off first. `start_iteration` (the iteration a run starts at: 0, or the checkpoint it resumes
    from) keeps one history: JSONL records of later iterations, logged by a run whose later state
    was not kept, are moved to `<stem>.superseded.jsonl` (:func:`set_aside_records_after`), and
    TensorBoard hides its events of those iterations (SummaryWriter's `purge_step`).
    """

    def __init__(self, tensorboard_dir: str | None, jsonl_path: str | None,
                 start_iteration: int | None = None) -> None:
        self._tensorboard = None
        self._jsonl = None
        self.set_aside = 0  # records of later iterations moved out of the JSONL file
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = None if start_iteration is None else start_iteration + 1
            self._tensorboard = SummaryWriter(log_dir=tensorboard_dir, purge_step=purge_step)
        if jsonl_path is not None:
            path = Path(jsonl_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_last_line(path)
            if start_iteration is not None:
                self.set_aside = set_aside_records_after(path, start_iteration)
            self._jsonl = open(path, "a", encoding="utf-8")

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        """Log `scalars` (tag -> value, e.g. "lm loss", "lm loss/RedPajamaC4") for `iteration`."""
        if self._tensorboard is not None:
            for tag, value in scalars.items():
                self._tensorboard.add_scalar(tag, float(value), iteration)
        if self._jsonl is not None:
            record = {"iteration": iteration, **{k: _json_value(v) for k, v in scalars.items()}}
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def schedule_scalars(schedule: Any) -> dict[str, int]:
    """A StageSchedule's fields as integer scalars named SCHEDULE_PREFIX + a key of SCHEDULE_FIELDS."""
    return {SCHEDULE_PREFIX + name: int(getattr(schedule, attribute)) for name, attribute in SCHEDULE_FIELDS.items()}


def _drop_partial_last_line(path: Path) -> None:
    """End `path` with a newline: complete a whole last record, cut off a partial one."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            f.write(b"\n")
        except ValueError:
            f.truncate(start)


def superseded_path(path: str | os.PathLike) -> Path:
    """Where :func:`set_aside_records_after` moves records: ``metrics.jsonl`` -> ``metrics.superseded.jsonl``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.superseded{path.suffix}")


def set_aside_records_after(path: str | os.PathLike, iteration: int) -> int:
    """Move the records of iterations after `iteration` from the JSON-lines file `path` to the end of
    :func:`superseded_path`; returns how many moved. Nothing is lost: they are appended there before
    `path` is replaced (atomically) by its other lines."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, later = [], []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        logged_at = record.get("iteration") if isinstance(record, dict) else None
        is_later = isinstance(logged_at, int) and logged_at > iteration
        (later if is_later else keep).append(line if line.endswith("\n") else line + "\n")
    if later:
        with open(superseded_path(path), "a", encoding="utf-8") as file:
            file.writelines(later)
            file.flush()
            os.fsync(file.fileno())
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)
    return len(later)


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """The records of a metrics JSONL file in file order, non-finite values back as floats.

    A last line that is not valid JSON (a run killed mid-write) is skipped.
    """
    lines = Path(jsonl_path).read_text(encoding="utf-8").splitlines()
    records = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if index == len(lines) - 1:
                break
            raise
        records.append({k: _NON_FINITE.get(v, v) if isinstance(v, str) else v for k, v in record.items()})
    return records


# Megatron-LM's `training_log` fields in its order, with its formats; losses (any other key
# containing "loss", e.g. "lm loss/RedPajamaC4") stand where `_LOSSES` does.
_LOSSES = "<losses>"
_FIELDS: list[tuple[str, str]] = [
    ("consumed samples", "{:12d}"),
    ("elapsed time per iteration (ms)", "{:.1f}"),
    ("throughput per GPU (TFLOP/s/GPU)", "{:.1f}"),
    ("learning rate", "{:.6E}"),
    ("global batch size", "{:5d}"),
    (_LOSSES, "{:.6E}"),
    ("loss scale", "{:.1f}"),
    ("grad norm", "{:.3f}"),
    ("num zeros", "{:.1f}"),
    ("params norm", "{:.3f}"),
    ("number of skipped iterations", "{:3d}"),
    ("number of nan iterations", "{:3d}"),
]
_FORMAT = dict(_FIELDS)
_RANK = {field: rank for rank, (field, _) in enumerate(_FIELDS)}


def _field(key: str) -> str | None:
    return key if key in _FORMAT else _LOSSES if "loss" in key else None


def format_log_line(iteration: int, train_iters: int, scalars: dict[str, float | int],
                    order: list[str] | None = None) -> str:
    """One console line in Megatron-LM's format (without its timestamp prefix).

    Megatron-LM's fields come in its order with its formats (losses `%.6E`, integers as
    integers); other keys follow in the order given, ints as ints and floats `%.6g`. Keys named
    in `order` come first, in that order.
    """
    order = order or []

    def rank(key: str) -> int:
        return order.index(key) - len(order) if key in order else _RANK.get(_field(key), len(_FIELDS))

    line = " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    for key in sorted(scalars, key=rank):  # stable: equal ranks keep the caller's order
        value = scalars[key]
        spec = _FORMAT.get(_field(key)) or ("{:d}" if isinstance(value, int) else "{:.6g}")
        line += f" {key}: {spec.format(int(value) if spec.endswith('d}') else value)} |"
    return line

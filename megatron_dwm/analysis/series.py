"""The scalars of a run's merged metrics records (:func:`~megatron_dwm.analysis.run_files.load_metrics`):
the names the trainer logs them under, their series over iterations and their last values."""

from __future__ import annotations

from typing import Any

DOMAIN_WEIGHT_PREFIX = "dwm/weight/"
DWM_PREFIX = "dwm/"  # every scalar the DWM logs ("dwm-valid loss" is an evaluation, logged without it too)
TRAIN_LOSS, VALID_LOSS, TARGET_LOSS = "lm loss", "lm loss validation", "dwm-valid loss"

Series = tuple[list[int], list[float]]  # (iterations, values)


def has_dwm(records: list[dict[str, Any]]) -> bool:
    """Whether the run logged any DWM scalar (`dwm/...`); a run with --dwm-disable logs none."""
    return any(key.startswith(DWM_PREFIX) for record in records for key in record)


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

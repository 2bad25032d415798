"""MetricsWriter's TensorBoard and JSONL output, read_metrics, and the Megatron-style console line."""

from __future__ import annotations

import math
import struct

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from megatron_dwm.training.metrics import MetricsWriter, format_log_line, read_metrics


def _scalars(iteration: int) -> dict[str, float]:
    return {
        "lm loss": 10.0 / (iteration + 1),
        "lm loss/RedPajamaC4": math.pi * iteration,
        "learning-rate": 3e-4 * iteration / 7,
    }


def test_tensorboard_scalars(tmp_path):
    with MetricsWriter(str(tmp_path / "tb"), None) as writer:
        for iteration in (1, 2, 5):
            writer.write(iteration, _scalars(iteration))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["learning-rate", "lm loss", "lm loss/RedPajamaC4"]
    for tag in ("lm loss", "lm loss/RedPajamaC4", "learning-rate"):
        read = events.Scalars(tag)
        assert [e.step for e in read] == [1, 2, 5]
        # TensorBoard keeps float32.
        f32 = [struct.unpack("f", struct.pack("f", _scalars(i)[tag]))[0] for i in (1, 2, 5)]
        assert [e.value for e in read] == f32


def test_jsonl_round_trip_is_exact(tmp_path):
    path = tmp_path / "logs" / "nested" / "metrics.jsonl"  # parent dirs are created
    with MetricsWriter(None, str(path)) as writer:
        for iteration in range(1, 4):
            writer.write(iteration, _scalars(iteration))
        # Before close: every line is already flushed.
        assert len(read_metrics(path)) == 3
    records = read_metrics(path)
    assert records == [{"iteration": i, **_scalars(i)} for i in range(1, 4)]
    assert all(type(r["iteration"]) is int for r in records)
    assert [r["lm loss"].hex() for r in records] == [_scalars(i)["lm loss"].hex() for i in range(1, 4)]


def test_non_finite_values(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(None, str(path)) as writer:
        writer.write(1, {"lm loss": float("nan"), "grad norm": float("inf"), "x": float("-inf"), "n": 3})
    line = path.read_text()
    assert '"lm loss": "NaN"' in line and '"grad norm": "Infinity"' in line and '"x": "-Infinity"' in line
    (record,) = read_metrics(path)
    assert math.isnan(record["lm loss"]) and record["grad norm"] == math.inf and record["x"] == -math.inf
    assert record["n"] == 3 and type(record["n"]) is int


def test_append_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(None, str(path)) as writer:
        writer.write(1, {"lm loss": 2.5})
    with MetricsWriter(None, str(path)) as writer:
        writer.write(2, {"lm loss": 2.25})
    assert read_metrics(path) == [{"iteration": 1, "lm loss": 2.5}, {"iteration": 2, "lm loss": 2.25}]


def test_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(None, str(path)) as writer:
        writer.write(1, {"lm loss": 2.5})
        writer.write(2, {"lm loss": 2.25})
    with open(path, "a") as f:
        f.write('{"iteration": 3, "lm lo')  # killed mid-write
    assert read_metrics(path) == [{"iteration": 1, "lm loss": 2.5}, {"iteration": 2, "lm loss": 2.25}]
    # A resumed run cuts the partial line off before appending.
    with MetricsWriter(None, str(path)) as writer:
        writer.write(3, {"lm loss": 2.0})
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3]
    # A bad line that is not the last one is an error, not silently dropped.
    path.write_text('{"iteration": 1}\n{"itera\n{"iteration": 2}\n')
    with pytest.raises(ValueError):
        read_metrics(path)


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "lm loss": 2.5}')
    assert read_metrics(path) == [{"iteration": 1, "lm loss": 2.5}]
    with MetricsWriter(None, str(path)) as writer:
        writer.write(2, {"lm loss": 2.25})
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2]


def test_writer_without_outputs_is_a_no_op(tmp_path):
    with MetricsWriter(None, None) as writer:
        writer.write(1, {"lm loss": 1.0})
    assert list(tmp_path.iterdir()) == []


MEGATRON_LINE = (
    " iteration        5/      20 | consumed samples:           40 |"
    " elapsed time per iteration (ms): 123.4 | learning rate: 3.000000E-04 |"
    " global batch size:     8 | lm loss: 6.123456E+00 | loss scale: 1.0 | grad norm: 1.234 |"
    " number of skipped iterations:   0 | number of nan iterations:   0 |"
)


def test_format_log_line_matches_megatron():
    # Given out of order, with floats for the integer fields: Megatron's order and formats win.
    scalars = {
        "grad norm": 1.23449, "lm loss": 6.1234561, "loss scale": 1.0, "number of nan iterations": 0,
        "learning rate": 3e-4, "global batch size": 8.0, "consumed samples": 40,
        "number of skipped iterations": 0, "elapsed time per iteration (ms)": 123.44,
    }
    assert format_log_line(5, 20, scalars) == MEGATRON_LINE


def test_format_log_line_losses_and_unknown_keys():
    line = format_log_line(7, 100, {
        "dwm weight max": 1.75, "lm loss/RedPajamaC4": 0.5, "tokens": 4096,
        "grad norm": 2.0, "lm loss": 3.0, "learning rate": 1e-3,
    })
    assert line == (
        " iteration        7/     100 | learning rate: 1.000000E-03 | lm loss/RedPajamaC4: 5.000000E-01 |"
        " lm loss: 3.000000E+00 | grad norm: 2.000 | dwm weight max: 1.75 | tokens: 4096 |"
    )
    assert format_log_line(7, 100, {"lm loss": float("nan")}).endswith(" lm loss: NAN |")


def test_format_log_line_order():
    scalars = {"lm loss": 3.0, "learning rate": 1e-3, "mfu": 0.4125}
    line = format_log_line(1, 2, scalars, order=["mfu", "lm loss"])
    assert line == (" iteration        1/       2 | mfu: 0.4125 | lm loss: 3.000000E+00 |"
                    " learning rate: 1.000000E-03 |")
    assert scalars == {"lm loss": 3.0, "learning rate": 1e-3, "mfu": 0.4125}  # not modified

"""The efficacy lab end to end on a smoke configuration: one scenario, two methods, one seed, a few
iterations of real training. Checks the report's structure, that the paired runs read identical
training data in the same order, and that a second invocation trains nothing again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
METHODS = ["uniform", "loss-linupper"]
TRAIN_ITERS = 6


def _lab(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "bench" / "efficacy.py"), "--quick", "--scenarios", "target",
               "--methods", *METHODS, "--seeds", "1", "--train-iters", str(TRAIN_ITERS), "--out", str(out), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)


def _batches(run: Path) -> list[tuple[int, list[str], list[int]]]:
    """(iteration, domains, document ids) of every logged global batch of a run, in order."""
    records = [json.loads(line) for line in (run / "dwm_samples.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["domain"], r["document_id"]) for r in records]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficacy")
    first = _lab(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, first


def test_the_report_holds_one_row_per_method_with_paired_differences(lab):
    out, _ = lab
    results = json.loads((out / "results.json").read_text())
    assert results["failed or missing runs"] == []
    assert {(r["scenario"], r["method"], r["seed index"]) for r in results["runs"]} == \
        {("target", method, 0) for method in METHODS}
    methods = results["scenarios"]["target"]["methods"]
    assert list(methods) == METHODS
    uniform_loss = methods["uniform"]["final target loss"]["mean"]
    peer = methods["loss-linupper"]
    assert peer["paired difference"]["mean"] == pytest.approx(peer["final target loss"]["mean"] - uniform_loss)
    assert peer["paired difference"]["n"] == 1 and peer["paired difference"]["low"] is None  # one seed: no CI
    curve = next(r for r in results["runs"] if r["method"] == "uniform")["target loss curve"]
    assert curve["tokens"][-1] == TRAIN_ITERS * 16 * 128  # evaluated at the end of training
    table = (out / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| method"))
    assert "Δ vs uniform [95% CI]" in header and "Δ at equal wall-clock" in header
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == METHODS
    assert (out / "plots" / "target-target-loss.png").stat().st_size > 0


def test_paired_runs_read_the_same_data_in_the_same_order(lab):
    out, _ = lab
    uniform, peer = (_batches(out / "target" / method / "seed0") for method in METHODS)
    assert len(uniform) == TRAIN_ITERS  # the smoke configuration logs every iteration
    assert uniform == peer


def test_a_second_invocation_trains_nothing_again(lab):
    out, _ = lab
    before = {p: p.stat().st_mtime_ns for p in out.glob("target/*/seed0/metrics.jsonl")}
    again = _lab(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.glob("target/*/seed0/metrics.jsonl")} == before

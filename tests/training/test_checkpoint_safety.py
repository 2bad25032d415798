"""Checkpoints are never lost: a missing or corrupt newest checkpoint stops the run before anything is
written, naming the file and the newest complete checkpoint; ``--ckpt-step`` resumes from that one
exactly; no run replaces a checkpoint it did not load; a run's metrics hold one history. Also the
documented load options: ``--no-load-optim``, ``--no-load-rng``, release checkpoints and
``--dwm-load`` of a checkpoint without a DWM.

One uninterrupted run (6 iterations, checkpoints at 2, 4 and 6) is the reference; each case works on
a copy of its checkpoint directory, which also holds its metrics.jsonl. Every run draws one number
per iteration from each global generator (tests/training/scripts/train_drawing_random.py), so a
test can tell which random state a run continues from."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from megatron_dwm.checkpoint_layout import TRACKER_FILE, CheckpointError, find_checkpoint
from megatron_dwm.training.metrics import WALL_CLOCK_METRICS, read_metrics, set_aside_records_after, superseded_path
from tests.training.corpus import training_flags
from tests.training.launch import Job, run_job

DRAWING = Path(__file__).parent / "scripts" / "train_drawing_random.py"
ITERS = 6


def _flags(corpus, checkpoints: Path, *extra: str, load: bool = True) -> list[str]:
    """The reference run's flags (--load and --save the same directory, as a requeued job has them)."""
    return training_flags(corpus, "--train-iters", str(ITERS), "--save", str(checkpoints), "--save-interval", "2",
                          *(["--load", str(checkpoints)] if load else []), "--eval-interval", str(ITERS), *extra)


def _job(flags: list[str], log_dir: Path) -> Job:
    return Job(flags, 1, log_dir, script=DRAWING, env={"RANDOM_DRAWS_FILE": str(log_dir / "draws.jsonl")})


def _run(flags: list[str], log_dir: Path) -> Job:
    return run_job(flags, 1, log_dir, script=DRAWING, env={"RANDOM_DRAWS_FILE": str(log_dir / "draws.jsonl")})


def _fails(flags: list[str], log_dir: Path) -> str:
    """Run a job that must stop with exit code 1 and a one-line error (no traceback); its output."""
    job = _job(flags, log_dir)
    assert job.wait() == [1], job.output()
    output = job.output()
    assert "Traceback" not in output, output
    return output


def _draws(log_dir: Path) -> dict[int, dict]:
    """Iteration -> the numbers drawn before its step (none if the run trained no iteration)."""
    path = log_dir / "draws.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {record.pop("iteration"): record for record in map(json.loads, lines)}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def _history(metrics: Path) -> list[dict]:
    """The records of a metrics file without the timings (which no two runs share)."""
    return [{k: v for k, v in record.items() if k not in WALL_CLOCK_METRICS} for record in read_metrics(metrics)]


def _common(checkpoint: Path) -> dict:
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(checkpoint))


def _adam_moments(checkpoint: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Parameter name -> (exp_avg, exp_avg_sq) stored in a checkpoint."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import load as dcp_load

    metadata = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    keys = [k for k in metadata if k.startswith("optimizer.state.exp_avg")]
    tensors = {k: torch.empty(metadata[k].size, dtype=metadata[k].properties.dtype) for k in keys}
    dcp_load(tensors, storage_reader=FileSystemReader(str(checkpoint)), no_dist=True)
    names = [k.removeprefix("optimizer.state.exp_avg.") for k in keys if k.startswith("optimizer.state.exp_avg.")]
    return {n: (tensors[f"optimizer.state.exp_avg.{n}"], tensors[f"optimizer.state.exp_avg_sq.{n}"]) for n in names}


def _is_one_adam_step(checkpoint: Path, beta1: float = 0.9, beta2: float = 0.999) -> bool:
    """Adam's moments after one step from a fresh state: m = (1 - b1) g and v = (1 - b2) g^2, so
    m^2 (1 - b2) = v (1 - b1)^2 for every element, whatever the gradient g was."""
    moments = _adam_moments(checkpoint)
    assert moments
    return all(torch.allclose(m.double() ** 2 * (1 - beta2), v.double() * (1 - beta1) ** 2, rtol=1e-4, atol=1e-30)
               for m, v in moments.values())


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run: <dir>/ckpt holds iter_0000002, 4, 6, the tracker and metrics.jsonl;
    <dir>/logs its output and random draws; dwm_samples.jsonl, the weighting policy's per-sample
    weights, beside the metrics. --load names the empty directory: a first run."""
    run = tmp_path_factory.mktemp("reference")
    _run(_flags(corpus, run / "ckpt"), run / "logs")
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == [
        "dwm_samples.jsonl", "iter_0000002", "iter_0000004", "iter_0000006", TRACKER_FILE, "metrics.jsonl"]
    return run


def _copy(reference: Path, tmp_path: Path) -> Path:
    checkpoints = tmp_path / "ckpt"
    shutil.copytree(reference / "ckpt", checkpoints)
    return checkpoints


def _name_iteration_8_in_tracker(checkpoints: Path) -> Path:
    (checkpoints / TRACKER_FILE).write_text("8\n")
    return checkpoints / "iter_0000008"


def _remove_iteration_6(checkpoints: Path) -> Path:
    shutil.rmtree(checkpoints / "iter_0000006")
    return checkpoints / "iter_0000006"


def _truncate_distcp(checkpoints: Path) -> Path:
    path = checkpoints / "iter_0000006" / "__0_0.distcp"
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)
    return path


def _delete_metadata(checkpoints: Path) -> Path:
    path = checkpoints / "iter_0000006" / ".metadata"
    path.unlink()
    return path


def _overwrite_distcp_start(checkpoints: Path) -> Path:
    """Complete by its files and sizes, but the first stored object's bytes are zeros: found on load."""
    with open(checkpoints / "iter_0000006" / "__0_0.distcp", "r+b") as file:
        file.write(bytes(64))
    return checkpoints / "iter_0000006"


# case: (damage, the problem the error states, the checkpoint to resume from)
CASES = {
    "tracker-names-missing-iteration": (_name_iteration_8_in_tracker,
                                        "{tracker} names iteration 8, but {path} does not exist.", 6),
    "newest-iteration-deleted": (_remove_iteration_6, "{tracker} names iteration 6, but {path} does not exist.", 4),
    "distcp-truncated": (_truncate_distcp, "the newest checkpoint is incomplete: {path} is truncated: {size} bytes, "
                                           "{checkpoints}/iter_0000006/.metadata lists data up to byte", 4),
    "metadata-deleted": (_delete_metadata, "the newest checkpoint is incomplete: {path} is missing.", 4),
    "distcp-overwritten": (_overwrite_distcp_start, "{path}: cannot be loaded (rank 0: ", 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_newest_checkpoint_stops_the_run_and_ckpt_step_resumes_exactly(case, corpus, reference, tmp_path):
    damage, problem, fallback = CASES[case]
    checkpoints = _copy(reference, tmp_path)
    damaged = damage(checkpoints)
    before = _hashes(checkpoints)

    # 1. The resumed run stops before it writes anything, naming the damaged file and the way on.
    output = _fails(_flags(corpus, checkpoints), tmp_path / "refused")
    size = damaged.stat().st_size if damaged.is_file() else None
    expected = problem.format(tracker=checkpoints / TRACKER_FILE, path=damaged, size=size, checkpoints=checkpoints)
    assert f"error: rank 0: --load {checkpoints}: {expected}" in output, output
    older_than = " before iter_0000006" if fallback < ITERS and (checkpoints / "iter_0000006").exists() else ""
    assert (f"The newest complete checkpoint under {checkpoints}{older_than} is {checkpoints}/iter_{fallback:07d}: "
            f"pass --ckpt-step {fallback} to resume from it.") in output, output
    assert _hashes(checkpoints) == before  # no checkpoint, metrics or tracker written
    assert not (checkpoints / "metrics.superseded.jsonl").exists()

    # 2. Resuming from the older checkpoint must not replace the damaged one, which is newer.
    resume = _flags(corpus, checkpoints, "--ckpt-step", str(fallback))
    if (checkpoints / "iter_0000006").exists() and fallback < 6:
        output = _fails(resume, tmp_path / "refused-ckpt-step")
        assert (f"error: rank 0: --save {checkpoints} holds {checkpoints}/iter_0000006, newer than iteration 4, "
                f"where this run starts (from {checkpoints}/iter_0000004); the run would write that iteration "
                f"again and replace it. Move it out of {checkpoints}") in output, output
        assert _hashes(checkpoints) == before
        shutil.move(checkpoints / "iter_0000006", tmp_path / "damaged_iter_0000006")

    # 3. --ckpt-step resumes from it: the same history as the uninterrupted run, once, and the same
    #    random streams; the older checkpoints' bytes are untouched.
    older = {name: digest for name, digest in before.items() if name.startswith(("iter_0000002", "iter_0000004"))}
    job = _run(resume, tmp_path / "resumed")
    assert (f"loaded model, progress, optimizer from {checkpoints}/iter_{fallback:07d} (iteration {fallback}, "
            f"consumed samples {8 * fallback})") in job.output()
    assert _history(checkpoints / "metrics.jsonl") == _history(reference / "ckpt" / "metrics.jsonl")
    replaced = [r for r in read_metrics(reference / "ckpt" / "metrics.jsonl") if r["iteration"] > fallback]
    if replaced:
        assert read_metrics(checkpoints / "metrics.superseded.jsonl") == replaced
        assert (f"moved {len(replaced)} records of iterations after {fallback} from {checkpoints}/metrics.jsonl to "
                f"{checkpoints}/metrics.superseded.jsonl") in job.output()
    reference_draws = _draws(reference / "logs")
    assert _draws(tmp_path / "resumed") == {i: reference_draws[i] for i in range(fallback + 1, ITERS + 1)}
    assert {name: digest for name, digest in _hashes(checkpoints).items() if name in older} == older
    if fallback == ITERS:  # nothing left to train: nothing written
        assert _hashes(checkpoints) == before
    else:
        assert (checkpoints / TRACKER_FILE).read_text() == f"{ITERS}\n"


def test_a_new_run_never_writes_into_a_directory_of_checkpoints(corpus, reference, tmp_path):
    checkpoints = _copy(reference, tmp_path)
    before = _hashes(checkpoints)
    output = _fails(_flags(corpus, checkpoints, load=False), tmp_path / "refused")
    assert (f"error: rank 0: --save {checkpoints} already holds checkpoints that this run did not load "
            f"(iter_0000002, iter_0000004, iter_0000006); a new run would replace them. Resume them with --load "
            f"{checkpoints}, or save elsewhere.") in output, output
    assert _hashes(checkpoints) == before


def test_no_load_optim_starts_a_fresh_optimizer_and_schedule(corpus, reference, tmp_path):
    """From iteration 4 with --no-load-optim: the model, progress and random states are the
    checkpoint's; Adam's state is one step old after one iteration, and the learning rate is the
    schedule's first value again (the scheduler goes with the optimizer, as in Megatron-LM)."""
    job = _run(training_flags(corpus, "--train-iters", "5", "--load", str(reference / "ckpt"), "--ckpt-step", "4",
                              "--no-load-optim", "--save", str(tmp_path / "ckpt")), tmp_path / "logs")
    assert f"loaded model, progress from {reference}/ckpt/iter_0000004 (iteration 4, consumed samples 32)" \
        in job.output()
    saved = tmp_path / "ckpt" / "iter_0000005"
    assert int(_common(saved)["optimizer"]["state"]["common_step"]) == 1
    assert _is_one_adam_step(saved)
    assert not _is_one_adam_step(reference / "ckpt" / "iter_0000004")  # the control: a loaded state is not
    (record,) = [r for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl") if "lm loss" in r]
    first = [r for r in read_metrics(reference / "ckpt" / "metrics.jsonl") if r["iteration"] == 1][0]
    assert record["iteration"] == 5 and record["consumed samples"] == 40
    assert record["learning rate"] == first["learning rate"]
    assert _draws(tmp_path / "logs") == {5: _draws(reference / "logs")[5]}


def test_no_load_rng_restarts_the_random_streams_from_the_seed(corpus, reference, tmp_path):
    """From iteration 4 with --no-load-rng: the random draws of iteration 5 are those of a fresh
    run's first iteration (the streams restart from --seed); optimizer and losses are the checkpoint's."""
    job = _run(training_flags(corpus, "--train-iters", "5", "--load", str(reference / "ckpt"), "--ckpt-step", "4",
                              "--no-load-rng", "--save", str(tmp_path / "ckpt")), tmp_path / "logs")
    assert f"loaded model, progress, optimizer from {reference}/ckpt/iter_0000004" in job.output()
    reference_draws = _draws(reference / "logs")
    assert reference_draws[1] != reference_draws[5]
    assert _draws(tmp_path / "logs") == {5: reference_draws[1]}
    assert int(_common(tmp_path / "ckpt" / "iter_0000005")["optimizer"]["state"]["common_step"]) == 5
    (record,) = [r for r in read_metrics(tmp_path / "ckpt" / "metrics.jsonl") if "lm loss" in r]
    expected = [r for r in read_metrics(reference / "ckpt" / "metrics.jsonl") if r["iteration"] == 5 and "lm loss" in r]
    assert {k: v for k, v in record.items() if k not in WALL_CLOCK_METRICS} == {k: v for k, v in expected[0].items()
                                                                      if k not in WALL_CLOCK_METRICS}


def test_release_checkpoint_loads_the_model_only(corpus, reference, tmp_path):
    """A release checkpoint (tracker "release") is what --finetune makes of any checkpoint: the
    model's weights, at iteration 0, with a fresh optimizer, data position and random streams. The
    run starts at iteration 0, so it also sets aside the history a metrics file held before."""
    release = tmp_path / "release-root"
    shutil.copytree(reference / "ckpt" / "iter_0000004", release / "release")
    (release / TRACKER_FILE).write_text("release\n")
    shutil.copy(reference / "ckpt" / "metrics.jsonl", release / "metrics.jsonl")  # a history from elsewhere
    flags = ("--train-iters", "2", "--save-interval", "2")
    job = _run(training_flags(corpus, *flags, "--load", str(release), "--save", str(release)), tmp_path / "release")
    assert f"loaded model from {release}/release (iteration 0, consumed samples 0)" in job.output()
    _run(training_flags(corpus, *flags, "--load", str(reference / "ckpt"), "--ckpt-step", "4", "--finetune",
                        "--save", str(tmp_path / "finetuned")), tmp_path / "finetune")

    history = _history(release / "metrics.jsonl")
    assert history == _history(tmp_path / "finetuned" / "metrics.jsonl")
    assert [r["iteration"] for r in history if "lm loss" in r] == [1, 2]
    reference_losses = {r["iteration"]: r["lm loss"] for r in read_metrics(reference / "ckpt" / "metrics.jsonl")
                        if "lm loss" in r}
    assert history[0]["lm loss"] < reference_losses[1]  # the loaded weights, not a fresh model's
    reference_history = read_metrics(reference / "ckpt" / "metrics.jsonl")
    assert read_metrics(superseded_path(release / "metrics.jsonl")) == reference_history
    assert int(_common(release / "iter_0000002")["optimizer"]["state"]["common_step"]) == 2
    assert _draws(tmp_path / "release") == {i: _draws(reference / "logs")[i] for i in (1, 2)}


def test_dwm_load_of_a_checkpoint_without_a_dwm_is_refused(corpus, reference, tmp_path):
    output = _fails(training_flags(corpus, "--train-iters", "4", "--dwm-load", str(reference / "ckpt"),
                                   "--dwm-freeze", "--save", str(tmp_path / "ckpt"), dwm=True), tmp_path / "logs")
    assert (f"error: rank 0: --dwm-load {reference}/ckpt: {reference}/ckpt/iter_0000006 holds no DWM (its run had "
            "none, e.g. --dwm-disable)") in output, output
    assert not (tmp_path / "ckpt").exists()


def test_set_aside_records_after(tmp_path):
    """Records of later iterations move, in order, to the end of metrics.superseded.jsonl; the rest stay."""
    path = tmp_path / "metrics.jsonl"
    records = [{"iteration": i, "lm loss": 1.0 / i} for i in (1, 2, 3)] + [{"iteration": 2, "lm loss validation": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    superseded_path(path).write_text(json.dumps({"iteration": 9}) + "\n")
    assert set_aside_records_after(path, 1) == 3
    assert read_metrics(path) == records[:1]
    assert read_metrics(superseded_path(path)) == [{"iteration": 9}] + records[1:]
    assert set_aside_records_after(path, 1) == 0 and set_aside_records_after(tmp_path / "none.jsonl", 0) == 0
    assert set_aside_records_after(path, 0) == 1 and path.read_text() == ""


def test_which_checkpoint_load_resumes_from(reference, tmp_path):
    """A first run: nothing at all. Otherwise the newest of the tracker's iteration and the iter_*
    directories, complete (a job killed between a checkpoint's rename and the tracker's update
    leaves the tracker one behind); anything unreadable is an error naming the file."""
    assert find_checkpoint(tmp_path / "missing") is None and find_checkpoint(tmp_path) is None
    checkpoints = _copy(reference, tmp_path)
    (checkpoints / TRACKER_FILE).write_text("4\n")
    assert find_checkpoint(checkpoints) == checkpoints / "iter_0000006"
    (checkpoints / TRACKER_FILE).unlink()
    assert find_checkpoint(checkpoints) == checkpoints / "iter_0000006"
    assert find_checkpoint(checkpoints, ckpt_step=2) == checkpoints / "iter_0000002"
    assert find_checkpoint(checkpoints / "iter_0000004") == checkpoints / "iter_0000004"
    with pytest.raises(CheckpointError, match=rf"--ckpt-step 3: {checkpoints}/iter_0000003 does not exist\. The "
                                              rf"newest complete checkpoint under {checkpoints} before iter_0000003 "
                                              rf"is {checkpoints}/iter_0000002: pass --ckpt-step 2 to resume from it"):
        find_checkpoint(checkpoints, ckpt_step=3)
    (checkpoints / TRACKER_FILE).write_text("six\n")
    with pytest.raises(CheckpointError, match=f"{checkpoints / TRACKER_FILE}: expected an iteration number"):
        find_checkpoint(checkpoints)
    release = tmp_path / "release-only"
    shutil.copytree(checkpoints / "iter_0000002", release / "release")
    with pytest.raises(CheckpointError, match=f"{release} holds release/ but no {TRACKER_FILE}"):
        find_checkpoint(release)


def test_a_checkpoint_is_never_replaced(tmp_path):
    """write_checkpoint refuses an iteration whose directory exists, before writing anything."""
    from megatron_dwm.training.checkpointing import write_checkpoint

    existing = tmp_path / "iter_0000002"
    existing.mkdir()
    (existing / "__0_0.distcp").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match=f"{existing} already exists; a checkpoint is never replaced"):
        write_checkpoint(tmp_path, 2, {})
    assert _hashes(tmp_path) == {"iter_0000002/__0_0.distcp": hashlib.sha256(b"weights").hexdigest()}

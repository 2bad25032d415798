"""Plan and train the lab's runs: scenario x method x seed, two single-process CPU runs at a time,
resumable.

Layout of the output directory OUT:

    OUT/lab.json                          run settings, command lines, total wall-clock
    OUT/plan.json                         the runs of the latest invocation (for the report)
    OUT/failures.txt                      the failed runs of the latest invocation, with their errors
    OUT/data/                             the scenarios' data (scenarios.py)
    OUT/<scenario>/domain-oracle.json     the domain-weight grid's results and the chosen vector
    OUT/<scenario>/<method>/seed<k>/      metrics.jsonl, dwm_samples.jsonl, log.txt,
                                          checkpoints/ (only when another run loads it),
                                          result.json (written last: the run is finished)

A run directory without result.json is cleared and the run trained again from scratch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from megatron_dwm.analysis.output import write_text_atomically
from megatron_dwm.analysis.run_summary import format_duration
from megatron_dwm.training.metrics import read_metrics

from . import stats
from .methods import (DOMAIN_ORACLE, GRID_PREFIX, METHODS, TRANSFER, RunContext, domain_oracle_applies, get_method,
                      grid_method_name)

if TYPE_CHECKING:
    from .scenarios import Scenario

REPO = Path(__file__).resolve().parents[2]
RESULT = "result.json"
SELECTION = "domain-oracle.json"
LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class LabConfig:
    """The settings every run shares; all run lengths live here."""

    train_iters: int
    evaluations: int = 5  # target-loss evaluations per run, the last at its end
    min_eval_iters: int = 10  # 10 global batches of 16 x 128: at least 20,480 target-test tokens
    seq_length: int = 128
    global_batch_size: int = 16
    lr: float = 3e-3
    min_lr: float = 3e-4
    lr_warmup_fraction: float = 0.1
    base_seed: int = 1000  # seed k of a scenario trains with --seed base_seed + k
    grid_seeds: int = 2  # seeds on which every domain-weight grid vector is trained

    @property
    def tokens_per_iteration(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def eval_interval(self) -> int:
        return -(-self.train_iters // self.evaluations)

    @property
    def log_interval(self) -> int:
        """At most 5, and a divisor of the evaluation interval and the run length, so that every
        evaluation falls on a logged iteration (its training time is then known exactly)."""
        return math.gcd(5, self.eval_interval, self.train_iters)

    @property
    def lr_warmup_iters(self) -> int:
        return round(self.lr_warmup_fraction * self.train_iters)

    def eval_iters(self, target_test_tokens: int) -> int:
        """Global batches per evaluation: the whole target-test set, and at least min_eval_iters."""
        return max(self.min_eval_iters, -(-target_test_tokens // self.tokens_per_iteration))

    def settings(self) -> dict:
        return {**asdict(self), "eval interval": self.eval_interval, "log interval": self.log_interval,
                "lr warmup iters": self.lr_warmup_iters}

    def flags(self, preset: str, seed_index: int, target_test_tokens: int) -> list[str]:
        return ["--model-preset", preset, "--seq-length", str(self.seq_length),
                "--micro-batch-size", str(self.global_batch_size), "--global-batch-size", str(self.global_batch_size),
                "--train-iters", str(self.train_iters), "--lr", f"{self.lr:g}", "--min-lr", f"{self.min_lr:g}",
                "--lr-warmup-iters", str(self.lr_warmup_iters), "--eval-interval", str(self.eval_interval),
                "--eval-iters", str(self.eval_iters(target_test_tokens)), "--log-interval", str(self.log_interval),
                "--num-workers", "0", "--seed", str(self.base_seed + seed_index)]


# The run length of full mode (docs/results.md), chosen so that the whole lab takes about 75 min on
# 2 cores, two runs at a time (measured: docs/results.md). A tiny-preset run costs ~12 s of start-up, ~0.32 s per iteration and
# ~1.5 s per evaluation (DWM runs ~1.25x the iterations' time: their DWM phase is a quarter of
# training); a small-preset run ~15 s, ~1.6 s and ~8 s. 3 scenarios x 32-37 tiny runs (5 seeds; the
# domain-weight grid of 2 vectors on 2 seeds) + 10 small transfer runs: 106 x 52 s + 15 x 8 s +
# 10 x 215 s = ~7,900 core-seconds at 100 iterations, ~9,000 at 120.
FULL_TRAIN_ITERS = 120
QUICK_TRAIN_ITERS = 30  # --quick: a few minutes, for development


@dataclass(frozen=True)
class LabScenario:
    data: str  # the scenarios.py scenario whose data it trains on
    preset: str  # --model-preset


LAB_SCENARIOS = {
    "junk": LabScenario("junk", "tiny"),
    "target": LabScenario("target", "tiny"),
    "duplicates": LabScenario("duplicates", "tiny"),
    TRANSFER: LabScenario("target", "small"),
}


@dataclass(frozen=True)
class Run:
    """One planned run. A domain-oracle run on a seed beyond the grid's has method DOMAIN_ORACLE until
    the grid's vector is chosen."""

    scenario: str  # a LAB_SCENARIOS name
    method: str
    seed_index: int
    requires: tuple[str, ...] = ()  # keys of runs that must have finished first

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.method}/seed{self.seed_index}"


def run_dir(out: Path, scenario: str, method: str, seed_index: int) -> Path:
    return out / scenario / method / f"seed{seed_index}"


def finished(out: Path, run: Run) -> bool:
    return (run_dir(out, run.scenario, run.method, run.seed_index) / RESULT).is_file()


# --- planning --------------------------------------------------------------------------------------

def checkpointed(scenario: str, method: str) -> bool:
    """Whether runs of `method` in `scenario` keep their checkpoint: another method loads it."""
    return any(other.requires == (scenario, method) for other in METHODS.values())


def plan_runs(data: dict[str, Scenario], lab_scenarios: list[str], methods: list[str], seeds: int,
              config: LabConfig) -> list[Run]:
    """The runs of `methods` x `seeds` in each of `lab_scenarios` (`data`: the scenarios' data by
    LabScenario.data), in the order to start them: the domain-weight grid first, then seed by seed,
    then the transfer runs. A run another one builds on (the target scenario's dwm for dwm-transfer)
    is added if missing."""
    grid, by_seed, transfer = [], [], []
    for name in lab_scenarios:
        scenario = data[LAB_SCENARIOS[name].data]
        for method in methods:
            if method == DOMAIN_ORACLE:
                if domain_oracle_applies(name, scenario):
                    members = [Run(name, grid_method_name(index), seed) for index in range(len(scenario.oracle_grid))
                               for seed in range(min(config.grid_seeds, seeds))]
                    grid += members
                    by_seed += [Run(name, DOMAIN_ORACLE, seed, tuple(run.key for run in members))
                                for seed in range(config.grid_seeds, seeds)]
                continue
            spec = get_method(method)
            if not spec.applies(name, scenario):
                continue
            for seed in range(seeds):
                requires = ()
                if spec.requires:
                    source = Run(*spec.requires, seed)
                    by_seed.append(source)
                    requires = (source.key,)
                (transfer if name == TRANSFER else by_seed).append(Run(name, method, seed, requires))
    # a seed's runs train side by side; a run both asked for and built on is planned once
    by_seed.sort(key=lambda run: run.seed_index)
    transfer.sort(key=lambda run: run.seed_index)
    return list({run.key: run for run in grid + by_seed + transfer}.values())


def select_domain_oracle(out: Path, scenario: str, grid: list[list[float]], grid_seeds: int) -> str | None:
    """Choose the grid vector with the lowest mean final target loss over the grid seeds (among the
    vectors whose grid runs all finished), record the choice in OUT/<scenario>/domain-oracle.json
    and return its method name; None if no vector has all its runs."""
    means: list[float | None] = []
    for index in range(len(grid)):
        losses = []
        for seed in range(grid_seeds):
            result = run_dir(out, scenario, grid_method_name(index), seed) / RESULT
            if result.is_file():
                losses.append(json.loads(result.read_text())["final target loss"])
        means.append(statistics.fmean(losses) if len(losses) == grid_seeds else None)
    candidates = [index for index, mean in enumerate(means) if mean is not None]
    if not candidates:
        return None
    chosen = min(candidates, key=lambda index: means[index])
    write_text_atomically(out / scenario / SELECTION, json.dumps(
        {"grid": grid, "seeds": list(range(grid_seeds)), "mean final target loss": means, "chosen": chosen,
         "domain weights": grid[chosen]}, indent=1) + "\n")
    return grid_method_name(chosen)


# --- one run ---------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free now: each single-process run sets up its own torch.distributed store."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


PORT_RETRIES = 3  # restarts of a run that lost the port race, before it counts as failed


def lost_port_race(log: Path) -> bool:
    """Whether a run failed only because another process took its port between free_port() and its bind."""
    return log.is_file() and "EADDRINUSE" in log.read_text(errors="replace")


@dataclass
class Started:
    run: Run
    command: list[str]
    process: subprocess.Popen
    log: TextIO
    started: float


class Lab:
    """Trains a plan's runs, `jobs` at a time, reporting progress on `console`; `data` maps
    LabScenario.data names to the scenarios' data."""

    def __init__(self, out: Path, config: LabConfig, data: dict[str, Scenario], jobs: int,
                 console: TextIO = sys.stdout) -> None:
        self.out, self.config, self.data, self.jobs, self.console = out, config, data, jobs, console
        self.failures: dict[str, str] = {}  # run key -> why it failed

    def scenario(self, run: Run) -> Scenario:
        return self.data[LAB_SCENARIOS[run.scenario].data]

    def directory(self, run: Run) -> Path:
        return run_dir(self.out, run.scenario, run.method, run.seed_index)

    def command(self, run: Run) -> list[str]:
        directory, method = self.directory(run), get_method(run.method)
        source = run_dir(self.out, *method.requires, run.seed_index) / "checkpoints" if method.requires else None
        context = RunContext(run.scenario, run.seed_index, directory, source, self.config.train_iters)
        command = [sys.executable, str(REPO / "pretrain_dwm.py"),
                   *self.config.flags(LAB_SCENARIOS[run.scenario].preset, run.seed_index,
                                      self.scenario(run).target_test_tokens),
                   *method.flags(self.scenario(run), context), "--metrics-file", str(directory / "metrics.jsonl"),
                   # megatron-core's index caches: each run its own, as runs in parallel would race on a shared one
                   "--data-cache-path", str(directory / "data-cache")]
        if checkpointed(run.scenario, run.method):
            command += ["--save", str(directory / "checkpoints")]
        return command

    def start(self, run: Run) -> Started:
        directory = self.directory(run)
        shutil.rmtree(directory, ignore_errors=True)  # an unfinished earlier attempt
        directory.mkdir(parents=True)
        command = self.command(run)
        log = open(directory / "log.txt", "w")
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_PORT=str(free_port()), PYTHONWARNINGS="ignore")
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        return Started(run, command, process, log, time.monotonic())

    def finish(self, job: Started) -> str:
        """Record an ended process: result.json on success, a failure otherwise; a summary to print."""
        job.log.close()
        run, seconds, directory = job.run, time.monotonic() - job.started, self.directory(job.run)
        metrics = directory / "metrics.jsonl"
        loss = stats.final_target_loss(read_metrics(metrics)) if metrics.is_file() else None
        if job.process.returncode != 0 or loss is None:
            why = (f"exit status {job.process.returncode}" if job.process.returncode != 0
                   else "it ended without evaluating the target loss")
            return self.fail(run, why, directory / "log.txt")
        scenario = self.scenario(run)
        result = {"scenario": run.scenario, "method": run.method, "seed index": run.seed_index,
                  "seed": self.config.base_seed + run.seed_index, "model preset": LAB_SCENARIOS[run.scenario].preset,
                  "final target loss": loss, "wall-clock seconds": seconds, "train iters": self.config.train_iters,
                  "tokens per iteration": self.config.tokens_per_iteration,
                  "target-test tokens": scenario.target_test_tokens,
                  "eval iters": self.config.eval_iters(scenario.target_test_tokens),
                  "domains": list(scenario.domains), "harmful domain": scenario.harmful_domain,
                  "target domain": scenario.target_domain, "command": job.command}
        write_text_atomically(directory / RESULT, json.dumps(result, indent=1) + "\n")
        return f"{run.key}: final target loss {loss:.4f} ({format_duration(seconds)})"

    def fail(self, run: Run, why: str, log: Path | None = None) -> str:
        """Record a failed run in OUT/failures.txt; the message to print, with the log's last lines."""
        self.failures[run.key] = why
        write_text_atomically(self.out / "failures.txt", "".join(f"{key}: {reason}\n"
                                                                 for key, reason in self.failures.items()))
        if log is None or not log.is_file():
            return f"FAILED {run.key}: {why}"
        lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "\n".join([f"FAILED {run.key}: {why}; the end of its log ({log}):", *(f"    {line}" for line in lines)])

    def ready(self, run: Run) -> Run | str | None:
        """`run` if it can start now (a domain-oracle run with its grid vector chosen), the reason it
        never can, or None while a run it needs is still to train."""
        ended = [key for key in run.requires if key in self.failures or (self.out / key / RESULT).is_file()]
        if len(ended) < len(run.requires):
            return None
        if run.method == DOMAIN_ORACLE:  # the grid's failed runs just leave their vector out
            grid = self.scenario(run).oracle_grid
            chosen = select_domain_oracle(self.out, run.scenario, grid, self.config.grid_seeds)
            return replace(run, method=chosen) if chosen else "no domain-weight vector finished on all grid seeds"
        failed = [key for key in run.requires if key in self.failures]
        return f"it needs {', '.join(failed)}, which failed" if failed else run

    def train(self, runs: list[Run]) -> None:
        """Train every run of `runs` that has no result.json; a failed run is reported and the rest go on.
        On an exception (Ctrl-C) the runs in progress are stopped, to be trained again next time."""
        (self.out / "failures.txt").unlink(missing_ok=True)  # an earlier invocation's
        pending = [run for run in runs if not finished(self.out, run)]
        total, done, trained, running = len(runs), len(runs) - len(pending), 0, []
        port_retries: dict[str, int] = {}  # run key -> restarts after losing the port race
        if done:
            self.say(f"{done} of {total} runs already finished in {self.out}; training the other {len(pending)}")
        start = heartbeat = time.monotonic()
        try:
            while pending or running:
                for job in [job for job in running if job.process.poll() is not None]:
                    running.remove(job)
                    if (job.process.returncode != 0 and lost_port_race(self.directory(job.run) / "log.txt")
                            and port_retries.get(job.run.key, 0) < PORT_RETRIES):
                        job.log.close()  # its free port was taken before it bound it: start it again
                        port_retries[job.run.key] = port_retries.get(job.run.key, 0) + 1
                        running.append(self.start(job.run))
                        continue
                    done, trained = done + 1, trained + 1
                    self.say(self.progress(self.finish(job), done, total, start, trained))
                while len(running) < self.jobs:
                    verdicts = ((index, self.ready(run)) for index, run in enumerate(pending))
                    index, verdict = next(((i, v) for i, v in verdicts if v is not None), (None, None))
                    if verdict is None:
                        break
                    run = pending.pop(index)
                    if isinstance(verdict, str):
                        done += 1
                        self.say(self.progress(self.fail(run, verdict), done, total, start, trained))
                    elif finished(self.out, verdict):  # a domain-oracle run resolved to one trained before
                        done += 1
                    else:
                        running.append(self.start(verdict))
                if pending and not running:  # none can start, and nothing they wait for is training
                    for run in pending:
                        self.say(self.fail(run, f"it needs {', '.join(run.requires)}, which will not be trained"))
                    done, pending = done + len(pending), []
                if running and time.monotonic() - heartbeat > 60:
                    heartbeat = time.monotonic()
                    self.say("training " + ", ".join(self.describe(job) for job in running))
                time.sleep(0.5)
        except BaseException:
            for job in running:
                os.killpg(job.process.pid, signal.SIGTERM)
                job.process.wait()
                job.log.close()
            raise
        self.select_grids(runs)

    def select_grids(self, runs: list[Run]) -> None:
        """Choose the domain oracle of every scenario whose grid `runs` holds (with fewer seeds than
        the grid's, no domain-oracle run has chosen it yet)."""
        grids: dict[str, set[int]] = {}
        for run in runs:
            if run.method.startswith(GRID_PREFIX):
                grids.setdefault(run.scenario, set()).add(run.seed_index)
        for scenario, seeds in grids.items():
            select_domain_oracle(self.out, scenario, self.data[LAB_SCENARIOS[scenario].data].oracle_grid, len(seeds))

    def describe(self, job: Started) -> str:
        """'target/dwm/seed0 at iteration 40/120'."""
        metrics = self.directory(job.run) / "metrics.jsonl"
        records = read_metrics(metrics) if metrics.is_file() else []
        iteration = max((record["iteration"] for record in records), default=0)
        return f"{job.run.key} at iteration {iteration}/{self.config.train_iters}"

    def progress(self, message: str, done: int, total: int, start: float, trained: int) -> str:
        """'[12/45 runs done | 8 min 3 s elapsed | ETA 22 min 10 s] <message>'."""
        elapsed = time.monotonic() - start
        failed = f", {len(self.failures)} failed" if self.failures else ""
        eta = f" | ETA {format_duration(elapsed / trained * (total - done))}" if trained and done < total else ""
        return f"[{done}/{total} runs done{failed} | {format_duration(elapsed)} elapsed{eta}] {message}"

    def say(self, text: str) -> None:
        print(text, file=self.console, flush=True)


# --- the lab's own records -------------------------------------------------------------------------

def check_settings(out: Path, config: LabConfig) -> None:
    """Refuse to mix runs of different settings in one output directory."""
    path = out / "lab.json"
    if path.is_file():
        recorded = json.loads(path.read_text())["settings"]
        if recorded != config.settings():
            changed = ", ".join(f"{key} {recorded.get(key)} -> {value}" for key, value in config.settings().items()
                                if recorded.get(key) != value)
            raise SystemExit(f"error: {out} holds runs made with other settings ({changed}); "
                             f"choose another --out or the settings it was made with")


def record_invocation(out: Path, config: LabConfig, command: list[str], seconds: float) -> dict:
    """Add this invocation's command line and wall-clock to OUT/lab.json; the updated record."""
    path = out / "lab.json"
    lab = json.loads(path.read_text()) if path.is_file() else {"settings": config.settings(), "commands": [],
                                                                 "wall-clock seconds": 0.0}
    lab["commands"].append(command)
    lab["wall-clock seconds"] += seconds
    write_text_atomically(path, json.dumps(lab, indent=1) + "\n")
    return lab


def write_plan(out: Path, runs: list[Run]) -> None:
    write_text_atomically(out / "plan.json", json.dumps([run.key for run in runs], indent=1) + "\n")

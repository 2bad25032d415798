"""Start pretrain_dwm.py as a job of N rank processes, the way srun does (one process per rank, in a
session of its own, RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT in the environment), so tests can
signal or kill them. The ranks are forked from a server that has the modules imported already
(tests/training/preloaded.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from megatron_dwm.training.metrics import read_metrics
from tests.distributed import free_port, port_taken
from tests.training import preloaded

REPO = Path(__file__).resolve().parents[2]


class Job:
    """The rank processes of one job. If rank 0 finds the rendezvous port taken (another process
    bound it after `free_port` chose it), the job is started again on a new port, up to
    `START_ATTEMPTS` times, when the test next waits for it (`wait`, `wait_until`): nothing has
    run by then, since no rank gets past the rendezvous without rank 0."""

    START_ATTEMPTS = 3

    def __init__(self, flags: Sequence[str], world_size: int, log_dir: Path,
                 script: Path = REPO / "pretrain_dwm.py", env: dict[str, str] | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.flags, self.world_size, self.script, self.env = list(flags), world_size, script, env or {}
        self.logs = [log_dir / f"rank{rank}.log" for rank in range(world_size)]
        self.attempts = 0
        self._start()

    def _start(self) -> None:
        port = free_port()
        self.attempts += 1
        self.processes = []
        for rank in range(self.world_size):
            rank_env = {**os.environ, "OMP_NUM_THREADS": "1", **self.env}  # `env` may set the thread count
            rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(self.world_size),
                            LOCAL_WORLD_SIZE=str(self.world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                            PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO))
            if preloaded.enabled():
                self.processes.append(preloaded.PreloadServer.get().start(self.script, self.flags, rank_env, REPO,
                                                                         self.logs[rank]))
                continue
            with open(self.logs[rank], "w") as log:
                self.processes.append(subprocess.Popen([sys.executable, str(self.script), *self.flags],
                                                       cwd=REPO, env=rank_env, stdout=log, stderr=subprocess.STDOUT,
                                                       start_new_session=True))

    def _restarted_if_port_taken(self) -> bool:
        """Start the job again if rank 0 ended because the rendezvous port was taken."""
        if (self.attempts >= self.START_ATTEMPTS or self.processes[0].poll() in (None, 0)
                or not port_taken(self.logs[0].read_text(errors="replace"))):
            return False
        self.signal(signal.SIGKILL)
        for process in self.processes:
            process.wait(timeout=60)
        self._start()
        return True

    def signal(self, sig: signal.Signals) -> None:
        """Signal every process of every rank (a rank and its helpers), as SLURM does to a job."""
        for process in self.processes:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float = 300, poll: float = 0.02) -> list[int]:
        """Exit codes by rank; then kills whatever the ranks left behind (helper processes)."""
        deadline = time.time() + timeout
        try:
            while True:
                codes = [process.poll() for process in self.processes]
                if self._restarted_if_port_taken():
                    continue
                if None not in codes:
                    return codes
                if time.time() > deadline:
                    raise AssertionError(f"job did not finish in {timeout} s:\n{self.output()}")
                time.sleep(poll)
        finally:
            self.signal(signal.SIGKILL)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 300, poll: float = 0.01) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self._restarted_if_port_taken():
                continue
            if time.time() > deadline or all(process.poll() is not None for process in self.processes):
                self.signal(signal.SIGKILL)
                raise AssertionError(f"condition not reached:\n{self.output()}")
            time.sleep(poll)

    def output(self, tail: int = 6000) -> str:
        return "\n".join(f"--- rank {rank} ---\n{log.read_text()[-tail:]}" for rank, log in enumerate(self.logs))


def run_job(flags: Sequence[str], world_size: int, log_dir: Path, timeout: float = 300, **job_options) -> Job:
    """Run to completion; fails the test (with the ranks' output) unless every rank exits 0."""
    job = Job(flags, world_size, log_dir, **job_options)
    codes = job.wait(timeout)
    assert codes == [0] * world_size, f"exit codes {codes}:\n{job.output()}"
    return job


def losses_by_iteration(metrics_file: Path, key: str = "lm loss") -> dict[int, float]:
    """The last record of `key` for each iteration (a resumed run may repeat iterations)."""
    return {record["iteration"]: record[key] for record in read_metrics(metrics_file) if key in record}

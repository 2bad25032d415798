"""No process outlives its rank: a rank killed with SIGKILL (``kill -9 <pid>``, not its process
group) takes its helpers with it, although they ignore the stop signals of pre-emption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_dwm.training.checkpointing import read_tracker
from tests.training.corpus import training_flags
from tests.training.launch import Job

REPO = Path(__file__).resolve().parents[2]
GRACE_S = 10.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, session id) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # it has just exited
            continue
        state, ppid, _pgrp, session = stat[stat.rindex(")") + 2:].split()[:4]
        table[int(entry)] = (state, int(ppid), int(session))
    return table


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie holds nothing and runs nothing)."""
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][0] != "Z"}


def _session(leader: int) -> set[int]:
    """The running processes of the session that `leader` leads (a rank and everything it started)."""
    return {pid for pid, (state, _, session) in _processes().items() if session == leader and state != "Z"}


def _wait_until_gone(pids: set[int]) -> set[int]:
    """Those of `pids` still running after GRACE_S."""
    deadline = time.time() + GRACE_S
    while _alive(pids) and time.time() < deadline:
        time.sleep(0.05)
    return _alive(pids)


# A process that binds its children, forks two that ignore SIGTERM (one from its main thread, one
# from a thread that then ends), prints their pids and sleeps until it is killed.
PARENT = """
import multiprocessing, signal, threading, time
from megatron_dwm.training.child_processes import bind_children_to_this_process

def sleep():
    time.sleep(120)

bind_children_to_this_process()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
context = multiprocessing.get_context("fork")
children = [context.Process(target=sleep)]
children[0].start()
thread = threading.Thread(target=lambda: children.append(context.Process(target=sleep)) or children[1].start())
thread.start()
thread.join()
print(*(child.pid for child in children), flush=True)
time.sleep(120)
"""


def test_forked_children_die_with_their_parent_killed_by_sigkill():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    try:
        children = {int(pid) for pid in parent.stdout.readline().split()}
        assert len(children) == 2, "the parent did not report its two children"
        time.sleep(1.0)  # the thread that forked the second child has ended: no death signal may follow
        assert _alive(children) == children, "a child died while its parent was alive"
        parent.kill()
        parent.wait()
        assert _wait_until_gone(children) == set(), f"children outlived their parent by {GRACE_S} s"
    finally:
        os.killpg(parent.pid, signal.SIGKILL)


def test_no_process_of_a_job_outlives_its_rank_killed_mid_save(corpus, tmp_path):
    checkpoints = tmp_path / "ckpt"
    job = Job(training_flags(corpus, "--train-iters", "10000", "--save", str(checkpoints), "--save-interval", "1",
                             "--num-workers", "2"), 1, tmp_path / "logs")
    try:
        job.wait_until(lambda: read_tracker(checkpoints) is not None, timeout=120)  # saving every iteration now
        rank = job.processes[0].pid
        processes = _session(rank)
        # the rank, its 2 loader workers and the checkpoint writer's helper (which ignore SIGTERM)
        assert rank in processes and len(processes) >= 4, f"processes of the rank's session: {processes}"
        os.kill(rank, signal.SIGKILL)  # the rank only: its helpers are left to themselves
        assert job.processes[0].wait(timeout=GRACE_S) == -signal.SIGKILL
        assert _wait_until_gone(processes) == set(), f"left {GRACE_S} s after the rank was killed"
    finally:
        job.signal(signal.SIGKILL)

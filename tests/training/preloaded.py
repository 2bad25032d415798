"""Rank processes forked from a server that has already imported torch and megatron-core.

A job's rank starts as ``python script.py flags`` would, in a session of its own, with its own
environment, working directory and log, but without paying the ~4 s import of megatron-core
again: on a 2-core machine that import was most of the wall time of the multi-rank tests.

The server (``python -m tests.training.preloaded``) imports the entry point's modules and nothing
more (no thread, no process group); then, for each request read from stdin, it forks a child that
runs the script with ``runpy``, and it reports each child's exit code on stdout. Set
``MEGATRON_DWM_TEST_PRELOAD=0`` to start every rank with a fresh interpreter instead.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import runpy
import select
import subprocess
import sys
import threading
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRELOAD = ("pretrain_dwm", "megatron_dwm.dwm.exchange", "megatron_dwm.parallel", "megatron_dwm.training.dwm_ranks",
           "megatron_dwm.training.faults", "megatron_dwm.training.trainer")


def enabled() -> bool:
    return os.environ.get("MEGATRON_DWM_TEST_PRELOAD", "1") == "1"


# ------------------------------------------------------------------------------------- server side

def _run_child(request: dict, reply_fd: int) -> None:
    """In the forked child: become ``python script *args`` with the request's environment; exit."""
    code = 1
    try:
        os.close(reply_fd)
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import torch  # imported by the server already; a fresh interpreter would read the thread count here

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        script = request["script"]
        sys.argv = [script, *request["args"]]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        # a fresh interpreter's root logger: megatron.training configured it when it was imported here
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - as the interpreter would: print it, exit 1
        traceback.print_exc()
    _exit(code)


def _exit(code: int) -> None:
    """Leave as the interpreter does after a script (it waits for the script's threads, runs the atexit
    callbacks, among them multiprocessing's, which ends the loader workers, and flushes the output),
    without then freeing the server's modules object by object: in a forked child that writes to, so
    copies, most of the memory it shares with the server, 1.5-2 s of CPU per rank for nothing (what
    the script made in its functions was freed as they returned)."""
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    for module in PRELOAD:
        __import__(module)
    requests, reply_fd = 0, os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not reach the reply pipe
    pending = b""
    while True:
        readable, _, _ = select.select([requests], [], [], 0.02)
        while True:  # reap the children that have exited
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            os.write(reply_fd, f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        if not readable:
            continue
        chunk = os.read(requests, 65536)
        if not chunk:
            return  # the test session has ended
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _run_child(request, reply_fd)
            os.write(reply_fd, f"started {request['id']} {pid}\n".encode())


# ------------------------------------------------------------------------------------- client side

class RankProcess:
    """What the tests use of ``subprocess.Popen``: ``pid``, ``poll()``, ``wait(timeout)``."""

    def __init__(self, server: "PreloadServer", pid: int, script: str) -> None:
        self.server, self.pid, self.script = server, pid, script

    def poll(self) -> int | None:
        with self.server.changed:
            return self.server.exit_codes.get(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        with self.server.changed:
            if not self.server.changed.wait_for(lambda: self.pid in self.server.exit_codes or self.server.dead,
                                                timeout):
                raise subprocess.TimeoutExpired(self.script, timeout)
            if self.pid not in self.server.exit_codes:
                raise RuntimeError("the preloaded rank server died; rerun with MEGATRON_DWM_TEST_PRELOAD=0")
            return self.server.exit_codes[self.pid]


class PreloadServer:
    _instance: "PreloadServer | None" = None

    def __init__(self) -> None:
        # OpenMP reads its wait policy when torch is imported, here: idle threads sleep instead of
        # spinning, which matters when a test gives its ranks more threads than the machine has cores
        env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore",
                   PYTHONPATH=str(REPO))
        self.process = subprocess.Popen([sys.executable, "-m", "tests.training.preloaded"], cwd=REPO, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.changed = threading.Condition()
        self.exit_codes: dict[int, int] = {}
        self.started: dict[int, int] = {}
        self.dead = False
        self.next_id = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._read_replies, daemon=True).start()

    @classmethod
    def get(cls) -> "PreloadServer":
        if cls._instance is None or cls._instance.dead:
            cls._instance = PreloadServer()
        return cls._instance

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            kind, key, value = line.decode().split()
            with self.changed:
                (self.started if kind == "started" else self.exit_codes)[int(key)] = int(value)
                self.changed.notify_all()
        with self.changed:
            self.dead = True
            self.changed.notify_all()

    def start(self, script: Path, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> RankProcess:
        with self.lock:
            request_id, self.next_id = self.next_id, self.next_id + 1
            request = {"id": request_id, "script": str(script), "args": list(args), "env": env, "cwd": str(cwd),
                       "log": str(log)}
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        with self.changed:
            if not self.changed.wait_for(lambda: request_id in self.started or self.dead, 120):
                raise RuntimeError("the preloaded rank server did not answer in 120 s")
            if self.dead:
                raise RuntimeError("the preloaded rank server died; rerun with MEGATRON_DWM_TEST_PRELOAD=0")
            return RankProcess(self, self.started.pop(request_id), str(script))


if __name__ == "__main__":
    serve()

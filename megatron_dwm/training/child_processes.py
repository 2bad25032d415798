"""Child processes that die with the process that forked them.

A rank forks helpers: megatron-core's checkpoint writer helper (the server of its write-results
queue) and the data loader's workers. They ignore SIGTERM / SIGUSR1 on purpose (pre-emption must
not break a save), so when the rank itself is killed (SIGKILL, the OOM killer, a crash) nothing
would ever stop them: each would live on as an orphan holding its memory.

:func:`bind_children_to_this_process` registers fork hooks so that every child forked afterwards,
by any library, is bound to its parent:

* on Linux, a child forked from the parent's main thread asks the kernel for SIGKILL when the
  parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that the parent has not died already;
* elsewhere, or when the fork came from another thread (the kernel would signal the child when
  that *thread* ends, not the process), a daemon thread of the child polls its parent and SIGKILLs
  the child once the parent is gone (within :data:`POLL_SECONDS`).

A child forked by a bound process is bound too (the hooks are inherited), so a whole tree of
helpers goes. Processes started with exec (``subprocess``, multiprocessing's "spawn") run no
code of ours before exec, and are not bound.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.5

_bound = False
_prctl: Callable[..., int] | None = None
_fork = {"parent": 0, "from_main_thread": False}  # set in the parent just before each fork


def bind_children_to_this_process() -> None:
    """From now on, every child this process forks is SIGKILLed when this process ends.

    Idempotent; children forked before the first call are not bound.
    """
    global _bound, _prctl
    if _bound:
        return
    _prctl = _load_prctl()  # here, not in the child: loading a library right after a fork may deadlock
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _bound = True


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl
    except (OSError, AttributeError):
        return None


def _before_fork() -> None:
    _fork["parent"] = os.getpid()
    _fork["from_main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    parent = _fork["parent"]
    if not (_fork["from_main_thread"] and _set_parent_death_signal(signal.SIGKILL)):
        threading.Thread(target=_die_when_orphaned, args=(parent,), name="die-with-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the kernel was told to watch it
        os.kill(os.getpid(), signal.SIGKILL)


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False where unsupported."""
    return _prctl is not None and _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _die_when_orphaned(parent: int) -> None:
    """SIGKILL this process once `parent` is no longer its parent (it died; the child was re-parented)."""
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)

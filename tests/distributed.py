"""Run a function on N gloo ranks (one process each) and collect what each rank returns.

Usage in a test::

    def body(rank: int, world_size: int, scale: float) -> torch.Tensor: ...
    results = run_distributed(body, world_size=4, args=(2.0,))   # list indexed by rank

`body` must be a module-level function (it is pickled into the rank processes, which fork from a
forkserver that has torch and megatron-core imported). A failure on any
rank is re-raised in the test with that rank's traceback.
"""

from __future__ import annotations

import io
import os
import socket
import traceback
from typing import Any, Callable, Sequence

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A port free now; another process may take it before a rank binds it (see `port_taken`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(output: str) -> bool:
    """Whether `output` (a rank's or a launcher's) says that the rendezvous port was in use by the
    time it was bound: the job should then be started again on another port."""
    return "EADDRINUSE" in output or "address already in use" in output.lower()


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: Sequence, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        OMP_NUM_THREADS="1",
    )
    import logging
    import warnings

    import torch
    import torch.distributed as dist

    # Keep a failing test's report short: megatron-core's INFO lines and import-time warnings of
    # every rank would bury the traceback.
    logging.getLogger("megatron").setLevel(logging.WARNING)
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        result = fn(rank, world_size, *args)
        queue.put((rank, "ok", _serialize(result)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:  # noqa: BLE001
            pass
        if dist.is_initialized():
            dist.destroy_process_group()


def _serialize(result: Any) -> bytes:
    """The result as bytes: tensors put on a queue travel as shared-memory file descriptors, which
    the parent can no longer fetch once the rank has exited (FileNotFoundError in the test)."""
    buffer = io.BytesIO()
    torch.save(result, buffer)
    return buffer.getvalue()


def _deserialize(payload: bytes) -> Any:
    return torch.load(io.BytesIO(payload), weights_only=False)


def run_distributed(fn: Callable, world_size: int, args: Sequence[Any] = (), timeout: float = 600) -> list:
    """Spawn `world_size` ranks running `fn(rank, world_size, *args)`; return results by rank.

    If the rendezvous port was taken by another process between choosing and binding it, the
    ranks are started once more on a new port."""
    try:
        return _run_once(fn, world_size, args, timeout)
    except PortTaken:
        return _run_once(fn, world_size, args, timeout)


class PortTaken(RuntimeError):
    """The rendezvous port was in use by the time rank 0 bound it."""


def _run_once(fn: Callable, world_size: int, args: Sequence[Any], timeout: float) -> list:
    if os.environ.get("MEGATRON_DWM_TEST_DEVICE", "cpu") == "cuda":
        # importing megatron-core initialises CUDA, which a forked process cannot use: spawn
        ctx = mp.get_context("spawn")
    else:
        ctx = mp.get_context("forkserver")
        # the ranks fork from a server that has imported these once (single-threaded: safe to fork)
        ctx.set_forkserver_preload(["torch", "torch.distributed", "megatron.core", "tests.distributed"])
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, queue), daemon=False)
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            rank, status, payload = queue.get(timeout=timeout)
            if status == "ok":
                results[rank] = _deserialize(payload)
            else:
                errors.append(f"rank {rank} failed:\n{payload}")
                break
    finally:
        for proc in procs:
            proc.join(timeout=5 if errors else 60)
            if proc.is_alive():
                proc.kill()
    if errors:
        message = "\n".join(errors)
        raise (PortTaken if port_taken(message) else RuntimeError)(message)
    return [results[rank] for rank in range(world_size)]

#!/usr/bin/env python3
"""Pretrain a Llama-2 model on megatron-core with per-sample data weighting.

Launch like Megatron-LM:  torchrun --nproc-per-node N pretrain_dwm.py [flags]  (or srun).
Every flag is checked before any process group is created or any data is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import traceback
from typing import NoReturn

from megatron_dwm.library_warnings import quiet_library_messages

quiet_library_messages()  # first: torch and megatron-core warn as they are imported

from megatron_dwm.arguments import ConfigError, parse_args  # noqa: E402 - light: no torch, no megatron-core
from megatron_dwm.megatron_flags import ignored_flags_notice  # noqa: E402 - light too

ARGUMENT_ERROR_EXIT_CODE = 2  # argparse's
START_UP_ERROR_EXIT_CODE = 1  # a checkpoint --load or --dwm-load cannot use, --save would overwrite, ...
ARGUMENT_ERROR_GRACE_S = 20.0  # how long the other ranks leave rank 0 to report an error every rank finds


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))))
    except ConfigError as error:
        exit_on_argument_error(str(error))
    report_ignored_flags(args)

    logging.basicConfig(level=args.logging_level)
    logging.getLogger("megatron").setLevel(args.logging_level)
    from megatron_dwm.dwm.exchange import ExchangeError
    from megatron_dwm.parallel import destroy_parallel, initialize_parallel
    from megatron_dwm.checkpoint_layout import CheckpointError
    from megatron_dwm.training.child_processes import bind_children_to_this_process
    from megatron_dwm.training.dwm_ranks import run_dwm_rank
    from megatron_dwm.training.faults import NonFiniteStepsError, lost_peer_message
    from megatron_dwm.training.trainer import Trainer

    bind_children_to_this_process()  # no helper (loader worker, checkpoint writer) outlives this rank
    context = initialize_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                  args.dwm_ranks, args.seed, args.distributed_timeout_minutes,
                                  args.virtual_pipeline_model_parallel_size, args.context_parallel_size)
    try:
        code = Trainer(args, context).train() if context.is_llm_rank else run_dwm_rank(args, context)
    except CheckpointError as error:
        exit_on_start_up_error(str(error), context.rank)
    except (NonFiniteStepsError, ExchangeError) as error:
        report_run_error(f"error: rank {context.rank}: {error}")
    except BaseException as error:
        lost = lost_peer_message(error)
        if lost is None:
            traceback.print_exc()
        else:
            report_run_error(f"error: rank {context.rank}: {lost}")
        exit_now(1)
    destroy_parallel()
    return code


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun or srun) numbers it, before any process group."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def report_ignored_flags(args: argparse.Namespace) -> None:
    """Name the Megatron-LM flags given that have no effect here: one line, from rank 0 only."""
    notice = ignored_flags_notice(args)
    if notice and launch_rank() == 0:
        print(notice, flush=True)


def report_run_error(text: str) -> NoReturn:
    """A fault met while training (a lost peer rank, non-finite steps): each rank that meets it says
    so in its own log, naming itself, and torchrun's summary shows it as the job's root cause (its
    last lines) rather than a traceback; exit 1 at once."""
    print(text, file=sys.stderr, flush=True)
    _write_launcher_error_file(text)
    exit_now(1)


def exit_on_argument_error(message: str) -> NoReturn:
    """Report an argument error once per job, as the ranks' last words, and exit 2.

    Every rank finds the same error. Rank 0 reports it and exits at once. Under a launcher that then
    ends the other ranks (torchrun; srun, with --kill-on-bad-exit=1 as in examples/slurm/), they
    wait silently meanwhile, and one still alive after ARGUMENT_ERROR_GRACE_S (rank 0 did not end
    the job: its files, for one, may differ) reports the error itself; elsewhere every rank reports
    it. Under torchrun the error goes to the rank's error file, so that the launcher's failure
    summary shows it under "Root Cause", its last lines; otherwise to stderr.
    """
    rank = launch_rank()
    _report_once(f"pretrain_dwm.py: error: {message}" + ("" if rank == 0 else f" (rank {rank})"), rank)
    sys.exit(ARGUMENT_ERROR_EXIT_CODE)


def exit_on_start_up_error(message: str, rank: int) -> NoReturn:
    """Report an error the user can fix that stopped the start (a checkpoint that cannot be used, a
    --save that would be overwritten) like an argument error, without a traceback, and exit 1 at
    once (`exit_now`: the process groups exist)."""
    _report_once(f"pretrain_dwm.py: error: rank {rank}: {message}", rank)
    exit_now(START_UP_ERROR_EXIT_CODE)


def _report_once(text: str, rank: int) -> None:
    """Report `text`, an error that every rank may have found, from rank 0 only, unless the launcher
    leaves this rank alive for ARGUMENT_ERROR_GRACE_S (then rank 0 did not fail: this rank reports)."""
    if rank != 0 and ("TORCHELASTIC_RUN_ID" in os.environ or "SLURM_PROCID" in os.environ):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the launcher ends this rank now, even with a handler set
        time.sleep(ARGUMENT_ERROR_GRACE_S)
    if not _write_launcher_error_file(text):
        print(text, file=sys.stderr, flush=True)


def _write_launcher_error_file(text: str) -> bool:
    """Write `text` where torchrun reads a failed rank's error (TORCHELASTIC_ERROR_FILE); False if
    not under torchrun or the file cannot be written."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    record = {"message": {"message": text, "extraInfo": {"py_callstack": text, "timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w") as file:
            json.dump(record, file)
    except OSError:
        return False
    return True


def exit_now(code: int) -> None:
    """Leave at once after a failure, so that the launcher and the peers learn of it.

    An orderly exit could wait forever: on peers, or on helper processes (loader workers and the
    checkpoint writer's helper ignore SIGTERM, so pre-emption cannot break a save). The helpers are
    killed first: forked after the process groups were set up, they hold this rank's connections
    open, and peers would not see it gone.
    """
    import multiprocessing

    for child in multiprocessing.active_children():
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

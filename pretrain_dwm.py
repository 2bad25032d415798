#!/usr/bin/env python3
"""Pretrain a Llama-2 model on megatron-core with per-sample data weighting.

Launch like Megatron-LM:  torchrun --nproc-per-node N pretrain_dwm.py [flags]  (or srun).
Every flag is checked before any process group is created or any data is read.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from megatron_dwm.arguments import parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, world_size=int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1"))))

    logging.basicConfig(level=args.logging_level)
    logging.getLogger("megatron").setLevel(args.logging_level)
    from megatron_dwm.dwm.exchange import ExchangeError
    from megatron_dwm.parallel import destroy_parallel, initialize_parallel
    from megatron_dwm.training.dwm_ranks import run_dwm_rank
    from megatron_dwm.training.faults import NonFiniteStepsError, lost_peer_message
    from megatron_dwm.training.trainer import Trainer

    context = initialize_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                  args.dwm_ranks, args.seed, args.distributed_timeout_minutes)
    try:
        code = Trainer(args, context).train() if context.is_llm_rank else run_dwm_rank(args, context)
    except (NonFiniteStepsError, ExchangeError) as error:
        print(f"error: rank {context.rank}: {error}", file=sys.stderr, flush=True)
        exit_now(1)
    except BaseException as error:
        lost = lost_peer_message(error)
        if lost is None:
            traceback.print_exc()
        else:
            print(f"error: rank {context.rank}: {lost}", file=sys.stderr, flush=True)
        exit_now(1)
    destroy_parallel()
    return code


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

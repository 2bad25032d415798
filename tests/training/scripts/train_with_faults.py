"""pretrain_dwm.py with faults injected, for tests.

FAULT_NAN_AT=3,4     the sample weights of these iterations are NaN (so are the loss and gradient)
FAULT_KILL_IN_SAVE=2 SIGKILL this process half-way through writing its 2nd checkpoint
"""

import os
import signal
import sys

import torch

from megatron_dwm.training import checkpointing, trainer

nan_at = {int(i) for i in os.environ.get("FAULT_NAN_AT", "").split(",") if i}
kill_in_save = int(os.environ.get("FAULT_KILL_IN_SAVE", "0"))

uniform_weights = trainer.UniformWeighting.weights


def weights(self, microbatches, progress):
    result = uniform_weights(self, microbatches, progress)
    if progress.iteration + 1 in nan_at:
        result = [torch.full_like(w, float("nan")) for w in result]
    return result


trainer.UniformWeighting.weights = weights

saves = 0
dist_save = checkpointing.dist_checkpointing.save


def save_then_die(state, directory, *args, **kwargs):
    global saves
    saves += 1
    if saves == kill_in_save:
        with open(os.path.join(directory, "__0_0.distcp"), "wb") as partial:
            partial.write(b"\0" * 1024)  # some bytes are on disk when the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return dist_save(state, directory, *args, **kwargs)


checkpointing.dist_checkpointing.save = save_then_die

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import pretrain_dwm  # noqa: E402

sys.exit(pretrain_dwm.main(sys.argv[1:]))

"""pretrain_dwm.py with faults injected, for tests.

FAULT_NAN_AT=3,4     the sample weights of these iterations are NaN (so are the loss and gradient)
FAULT_KILL_IN_SAVE=2 SIGKILL this process half-way through writing its 2nd checkpoint
FAULT_DWM_NAN_AT=2   the DWM's weights for this iteration are NaN (its k-th weighting)
FAULT_FD_NAN_AT=1    the k-th finite-difference outer step comes out NaN
FAULT_RAISE_IN_SAVE=2 rank 0 raises an exception when it starts writing its 2nd checkpoint
FAULT_HOLD_AFTER=4   after logging iteration 4, every training rank waits (up to 5 min) until it has
                     received a stop signal (--exit-signal-handler) or is killed: a test can signal
                     the job at a known iteration instead of racing it
"""

import os
import signal
import sys
import time

import torch

from megatron_dwm.dwm import hypergradient, model
from megatron_dwm.training import checkpointing, iteration, policies, trainer

nan_at = {int(i) for i in os.environ.get("FAULT_NAN_AT", "").split(",") if i}
kill_in_save = int(os.environ.get("FAULT_KILL_IN_SAVE", "0"))
dwm_nan_at = int(os.environ.get("FAULT_DWM_NAN_AT", "0"))
fd_nan_at = int(os.environ.get("FAULT_FD_NAN_AT", "0"))
raise_in_save = int(os.environ.get("FAULT_RAISE_IN_SAVE", "0"))
hold_after = int(os.environ.get("FAULT_HOLD_AFTER", "0"))
calls = {"dwm": 0, "fd": 0}

uniform_weights = policies.UniformWeighting.weights


def weights(self, microbatches, iteration):
    result = uniform_weights(self, microbatches, iteration)
    if iteration + 1 in nan_at:
        result = [torch.full_like(w, float("nan")) for w in result]
    return result


policies.UniformWeighting.weights = weights

dwm_weights = model.DataWeightingModel.weights_from_scores


def nan_dwm_weights(self, scores):
    calls["dwm"] += 1
    result = dwm_weights(self, scores)
    return result * float("nan") if calls["dwm"] == dwm_nan_at else result


model.DataWeightingModel.weights_from_scores = nan_dwm_weights

fd = hypergradient.finite_difference_hypergradient


def nan_fd(*args, **kwargs):
    calls["fd"] += 1
    result = fd(*args, **kwargs)
    if calls["fd"] == fd_nan_at:
        return hypergradient.FiniteDifference(None, result.epsilon, result.direction_norm, False)
    return result


iteration.finite_difference_hypergradient = nan_fd

saves = 0
dist_save = checkpointing.dist_checkpointing.save


def save_then_die(state, directory, *args, **kwargs):
    global saves
    saves += 1
    if saves == raise_in_save and os.environ.get("RANK") == "0":
        raise RuntimeError("injected fault: rank 0 fails while writing a checkpoint")
    if saves == kill_in_save:
        with open(os.path.join(directory, "__0_0.distcp"), "wb") as partial:
            partial.write(b"\0" * 1024)  # some bytes are on disk when the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return dist_save(state, directory, *args, **kwargs)


checkpointing.dist_checkpointing.save = save_then_die

train_step = trainer.Trainer.train_step


def hold_then_step(self):
    """Hold before the step after iteration `hold_after` (logged by then): the next step's agreement sees the signal."""
    if hold_after and self.progress.iteration == hold_after:
        deadline = time.time() + 300
        while self._signals is None or self._signals.received is None:
            if time.time() > deadline:
                raise RuntimeError(f"FAULT_HOLD_AFTER={hold_after}: no stop signal came within 300 s")
            time.sleep(0.01)
    return train_step(self)


trainer.Trainer.train_step = hold_then_step

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import pretrain_dwm  # noqa: E402

sys.exit(pretrain_dwm.main(sys.argv[1:]))

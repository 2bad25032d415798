"""--dwm-hypergradient-scaling: the outer step hands the DWM the hypergradient standardized over the
batch (the default) or as computed (raw), and logs the raw one either way."""

from __future__ import annotations

import argparse

import pytest
import torch

from megatron_dwm.dwm.hypergradient import FiniteDifference
from megatron_dwm.dwm.schedule import StageSchedule
from megatron_dwm.training import weighting

RAW = torch.tensor([2e-3, -1e-3, 4e-3, 0.0])


class RecordingPlacement:
    last = None

    def __init__(self) -> None:
        self.applied: list[torch.Tensor] = []

    def apply_hypergradient(self, hypergradient: torch.Tensor) -> None:
        self.applied.append(hypergradient.clone())


@pytest.mark.parametrize("scaling", ["standardized", "raw"])
def test_the_dwm_learns_from_the_chosen_scaling(scaling):
    args = argparse.Namespace(train_iters=8, dwm_valid_batch_size=2, dwm_fd_direction="grad", global_batch_size=4,
                              dwm_fd_radius=0.01, dwm_hypergradient_scaling=scaling)
    placement = RecordingPlacement()
    policy = weighting.DWMWeighting(args, StageSchedule(8, 1, 8, 1), placement, None)
    assert policy.learns_at(0)
    policy.learn(FiniteDifference(RAW.clone(), 1e-3, 1.0, True, 1e-9), 1.0, 0)

    (applied,) = placement.applied
    centred = RAW.double() - RAW.double().mean()
    expected = centred / centred.pow(2).mean().sqrt() if scaling == "standardized" else RAW.double()
    assert torch.allclose(applied.double(), expected, rtol=1e-6, atol=0)
    assert torch.equal(policy._last_hypergradient, RAW.double())  # the logs keep the raw values

"""How far training has come: the counters a checkpoint must carry for an exact resume."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class TrainingProgress:
    iteration: int = 0  # optimizer steps taken (skipped ones included, as in Megatron-LM)
    consumed_train_samples: int = 0  # position of the training data iterator
    consumed_valid_samples: int = 0  # position of the valid-split iterator
    consumed_dwm_valid_samples: int = 0  # position in the DWM's validation set (outer steps)
    skipped_iterations: int = 0  # iterations whose update was skipped (NaN/Inf, fp16 overflow), in total
    consecutive_nonfinite: int = 0  # the current run of iterations skipped for a NaN/Inf

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for field in fields(self):
            setattr(self, field.name, int(state.get(field.name, 0)))

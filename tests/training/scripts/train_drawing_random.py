"""pretrain_dwm.py whose every iteration first draws one number from each global generator that a
checkpoint saves (Python's, NumPy's, torch's), as dropout or a random augmentation would, and
appends them to $RANDOM_DRAWS_FILE as a JSON line {"iteration": i, "random": .., "numpy": .., "torch": ..}
(the iteration the step makes), so a test can tell which random state a resumed run continues from.
"""

import json
import os
import random
import sys

import numpy
import torch

from megatron_dwm.training import trainer

train_step = trainer.Trainer.train_step


def draw_then_step(self):
    record = {"iteration": self.progress.iteration + 1, "random": random.random(),
              "numpy": float(numpy.random.random()), "torch": float(torch.rand(()))}
    with open(os.environ["RANDOM_DRAWS_FILE"], "a") as file:
        file.write(json.dumps(record) + "\n")
    return train_step(self)


trainer.Trainer.train_step = draw_then_step

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
import pretrain_dwm  # noqa: E402

sys.exit(pretrain_dwm.main(sys.argv[1:]))

"""What a newcomer meets first: a fast --help with defaults, no library noise, and a start-up
error shown once, as the last thing torchrun prints, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from megatron_dwm.checkpoint_layout import TRACKER_FILE
from tests.training.corpus import training_flags

REPO = Path(__file__).resolve().parents[1]

_HELP_IMPORTS = """
import runpy, sys
sys.argv = ["pretrain_dwm.py", "--help"]
try:
    runpy.run_path("pretrain_dwm.py", run_name="__main__")
except SystemExit as exit:
    print("exit code", exit.code)
heavy = sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "megatron"))
print("heavy modules:", heavy)
"""


def test_help_shows_defaults_without_importing_torch_or_megatron():
    result = subprocess.run([sys.executable, "-c", _HELP_IMPORTS], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    text = " ".join(result.stdout.split())  # argparse wraps lines
    assert result.stderr == "" and "exit code 0" in text, result.stderr
    assert "--lr LR peak learning rate (default: 0.0003)" in text
    assert "--dwm-lr DWM_LR learning rate of the DWM's Adam (default: 0.003)" in text
    assert "--seq-length SEQ_LENGTH training sequence length (default: 256)" in text
    assert "heavy modules: []" in text


_NOISY_IMPORTS = """
import warnings
from megatron_dwm.library_warnings import quiet_library_messages
quiet_library_messages()
import torch.utils.cpp_extension
import megatron.core.optimizer
import megatron.core.models.gpt.gpt_layer_specs
import megatron.core._rank_utils as rank_utils
import os
os.environ.pop("RANK", None)
rank_utils.safe_get_rank()
warnings.warn("a warning a user must see")
"""


def test_library_noise_is_silenced_and_other_warnings_still_show():
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONWARNINGS", "RANK", "SLURM_PROCID")}
    result = subprocess.run([sys.executable, "-c", _NOISY_IMPORTS], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith("UserWarning: a warning a user must see"), result.stderr


def test_torchrun_job_shows_a_damaged_checkpoint_once_and_last(corpus, tmp_path):
    """Both ranks find the --load directory's tracker naming a missing checkpoint: rank 0 reports it,
    through torchrun's error file, and the job exits 1 with no traceback from the ranks."""
    checkpoints = tmp_path / "ckpt"
    checkpoints.mkdir()
    (checkpoints / TRACKER_FILE).write_text("5\n")
    torchrun = Path(sys.executable).parent / "torchrun"
    flags = training_flags(corpus, "--train-iters", "2", "--load", str(checkpoints), "--save", str(checkpoints))
    result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", str(REPO / "pretrain_dwm.py"),
                             *flags], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    message = (f"pretrain_dwm.py: error: rank 0: --load {checkpoints}: {checkpoints / TRACKER_FILE} names iteration "
               f"5, but {checkpoints / 'iter_0000005'} does not exist. There is no other complete checkpoint under "
               f"{checkpoints}.")
    assert result.returncode == 1, output
    assert output.count(message) == 1, output
    summary = output.rstrip().splitlines()
    assert summary[-2] == f"  traceback : {message}" and summary[-1].startswith("====="), output  # torchrun's last
    assert "pretrain_dwm.py\", line" not in output and "CheckpointError" not in output, output

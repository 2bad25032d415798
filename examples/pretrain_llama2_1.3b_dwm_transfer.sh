#!/bin/bash
# Transfer: Llama-2 1.3B on SlimPajama, weighted by the DWM trained next to the 370M model
# (pretrain_llama2_370m_dwm.sh), loaded from its checkpoint directory and frozen. The frozen DWM
# runs on the training ranks (--dwm-ranks 0): it only computes weights.
# OUTPUT_DIR, DWM_CHECKPOINT and every variable of common.sh can be set from the environment; extra
# arguments are passed on to pretrain_dwm.py. DRY_RUN=1 prints the command instead of running it.
# See docs/launch.md.
set -euo pipefail

MODEL_PRESET=llama2-1.3b
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-1.3b-dwm-transfer}
DWM_CHECKPOINT=${DWM_CHECKPOINT:-runs/llama2-370m-dwm/checkpoints}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO_DIR/examples/common.sh"

DWM_ARGS=(--dwm-load "$DWM_CHECKPOINT" --dwm-freeze)
launch "$@"

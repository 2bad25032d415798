#!/bin/bash
# Llama-2 370M on SlimPajama with the Data Weighting Model trained alongside (5 stages), LAMBADA as
# the DWM's validation set. The DWM runs on one extra process (--dwm-ranks 1), added on the last
# node, so this node runs GPUS_PER_NODE + 1 processes (the extra one shares GPU 0).
# OUTPUT_DIR and every variable of common.sh can be set from the environment; extra arguments are
# passed on to pretrain_dwm.py. DRY_RUN=1 prints the command instead of running it. See docs/launch.md.
set -euo pipefail

MODEL_PRESET=llama2-370m
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-370m-dwm}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO_DIR/examples/common.sh"

train_dwm_alongside
launch "$@"

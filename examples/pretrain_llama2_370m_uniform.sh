#!/bin/bash
# Baseline: Llama-2 370M on SlimPajama with uniform sample weights (--dwm-disable), through the
# same loss and loop as the DWM runs; LAMBADA is still evaluated every --eval-interval.
# OUTPUT_DIR and every variable of common.sh can be set from the environment; extra arguments are
# passed on to pretrain_dwm.py. DRY_RUN=1 prints the command instead of running it. See docs/launch.md.
set -euo pipefail

MODEL_PRESET=llama2-370m
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-370m-uniform}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO_DIR/examples/common.sh"

DWM_ARGS=(--dwm-disable)
launch "$@"

#!/bin/bash
# The DWM on top of a pre-selected subset (e.g. the output of DSIR or QuRating, preprocessed with
# tools/preprocess_data.py): the 370M DWM run of pretrain_llama2_370m_dwm.sh, only the training
# data differs. SELECTED_DATA_PATH is a Megatron --data-path: one prefix, or
# "w1 prefix1 w2 prefix2 ..." (no spaces inside paths). The DWM runs on one extra process
# (--dwm-ranks 1), added on the last node (the extra one shares GPU 0).
# OUTPUT_DIR, SELECTED_DATA_PATH and every variable of common.sh can be set from the environment;
# extra arguments are passed on to pretrain_dwm.py. DRY_RUN=1 prints the command instead of
# running it. See docs/launch.md.
set -euo pipefail

MODEL_PRESET=llama2-370m
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-370m-dwm-selected}
SELECTED_DATA_PATH=${SELECTED_DATA_PATH:-/data/selected/dsir_text_document}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$REPO_DIR/examples/common.sh"

read -r -a TRAIN_DATA <<< "$SELECTED_DATA_PATH"
train_dwm_alongside
launch "$@"

#!/bin/bash
# The DWM on top of a pre-selected subset (e.g. the output of DSIR or QuRating, preprocessed with
# tools/preprocess_data.py): the 370M DWM run of pretrain_llama2_370m_dwm.sh, only the training
# data differs. SELECTED_DATA_PATH is a Megatron --data-path: one prefix, or
# "w1 prefix1 w2 prefix2 ..." (no spaces inside paths). The DWM runs on one extra process
# (--dwm-ranks 1), added on the last node (the extra one shares GPU 0).
# Every variable below can be set from the environment; extra arguments are passed on to
# pretrain_dwm.py. DRY_RUN=1 prints the command instead of running it. See docs/launch.md.
set -euo pipefail

# Cluster
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
DWM_RANKS=${DWM_RANKS:-1}

# Data, tokenizer and outputs
SELECTED_DATA_PATH=${SELECTED_DATA_PATH:-/data/selected/dsir_text_document}
LAMBADA_PATH=${LAMBADA_PATH:-/data/lambada/lambada_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-/data/llama2/tokenizer.model}
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-370m-dwm-selected}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$OUTPUT_DIR/checkpoints}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-$OUTPUT_DIR/tensorboard}

# Hyper-parameters: 40k steps x 256 x 2048 tokens = 21B tokens
TP=${TP:-1}
PP=${PP:-1}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-8}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
TRAIN_ITERS=${TRAIN_ITERS:-40000}
LR=${LR:-3e-4}
MIN_LR=${MIN_LR:-3e-5}
LR_WARMUP_ITERS=${LR_WARMUP_ITERS:-2000}
DWM_STAGES=${DWM_STAGES:-5}
DWM_LR=${DWM_LR:-1e-3}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

NPROC_PER_NODE=$GPUS_PER_NODE
if (( NODE_RANK == NNODES - 1 )); then
    NPROC_PER_NODE=$(( GPUS_PER_NODE + DWM_RANKS ))
fi

DISTRIBUTED_ARGS=(
    --nproc-per-node "$NPROC_PER_NODE"
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR"
    --master-port "$MASTER_PORT"
)

read -r -a SELECTED_DATA <<< "$SELECTED_DATA_PATH"
DATA_ARGS=(
    --data-path "${SELECTED_DATA[@]}"
    --split "969,30,1"
    --data-cache-path "$OUTPUT_DIR/data-cache"
    --tokenizer-type SentencePieceTokenizer
    --tokenizer-model "$TOKENIZER_MODEL"
    --dwm-valid-data-path "$LAMBADA_PATH"
)

MODEL_ARGS=(
    --model-preset llama2-370m
    --seq-length "$SEQ_LENGTH"
    --bf16
    --tensor-model-parallel-size "$TP"
    --pipeline-model-parallel-size "$PP"
)

TRAINING_ARGS=(
    --micro-batch-size "$MICRO_BATCH_SIZE"
    --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$TRAIN_ITERS"
    --lr "$LR"
    --min-lr "$MIN_LR"
    --lr-decay-style cosine
    --lr-warmup-iters "$LR_WARMUP_ITERS"
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --clip-grad 1.0
    --exit-signal-handler
)

DWM_ARGS=(
    --dwm-ranks "$DWM_RANKS"
    --dwm-stages "$DWM_STAGES"
    --dwm-lr "$DWM_LR"
)

OUTPUT_ARGS=(
    --save "$CHECKPOINT_DIR"
    --load "$CHECKPOINT_DIR"
    --save-interval 1000
    --eval-interval 1000
    --eval-iters 10
    --log-interval 10
    --tensorboard-dir "$TENSORBOARD_DIR"
)

CMD=(torchrun "${DISTRIBUTED_ARGS[@]}" "$REPO_DIR/pretrain_dwm.py"
     "${MODEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}" "${DWM_ARGS[@]}" "${OUTPUT_ARGS[@]}" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q' "${CMD[0]}"; printf ' %q' "${CMD[@]:1}"; printf '\n'
    exit 0
fi
mkdir -p "$OUTPUT_DIR"
exec "${CMD[@]}"

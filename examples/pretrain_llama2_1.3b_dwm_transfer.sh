#!/bin/bash
# Transfer: Llama-2 1.3B on SlimPajama, weighted by the DWM trained next to the 370M model
# (pretrain_llama2_370m_dwm.sh), loaded from its checkpoint directory and frozen. The frozen DWM
# runs on the training ranks (--dwm-ranks 0): it only computes weights.
# Every variable below can be set from the environment; extra arguments are passed on to
# pretrain_dwm.py. DRY_RUN=1 prints the command instead of running it. See docs/launch.md.
set -euo pipefail

# Cluster
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}

# Data, tokenizer and outputs
DATA_DIR=${DATA_DIR:-/data/slimpajama}
LAMBADA_PATH=${LAMBADA_PATH:-/data/lambada/lambada_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-/data/llama2/tokenizer.model}
OUTPUT_DIR=${OUTPUT_DIR:-runs/llama2-1.3b-dwm-transfer}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$OUTPUT_DIR/checkpoints}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-$OUTPUT_DIR/tensorboard}
DWM_CHECKPOINT=${DWM_CHECKPOINT:-runs/llama2-370m-dwm/checkpoints}

# Hyper-parameters: 20k steps x 512 x 2048 tokens = 21B tokens
TP=${TP:-1}
PP=${PP:-1}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-512}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
TRAIN_ITERS=${TRAIN_ITERS:-20000}
LR=${LR:-2e-4}
MIN_LR=${MIN_LR:-2e-5}
LR_WARMUP_ITERS=${LR_WARMUP_ITERS:-2000}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DISTRIBUTED_ARGS=(
    --nproc-per-node "$GPUS_PER_NODE"
    --nnodes "$NNODES"
    --node-rank "$NODE_RANK"
    --master-addr "$MASTER_ADDR"
    --master-port "$MASTER_PORT"
)

# SlimPajama's own domain proportions (by tokens)
DATA_ARGS=(
    --data-path
        0.522 "$DATA_DIR/RedPajamaCommonCrawl_text_document"
        0.267 "$DATA_DIR/RedPajamaC4_text_document"
        0.052 "$DATA_DIR/RedPajamaGithub_text_document"
        0.042 "$DATA_DIR/RedPajamaBook_text_document"
        0.046 "$DATA_DIR/RedPajamaArXiv_text_document"
        0.038 "$DATA_DIR/RedPajamaWikipedia_text_document"
        0.033 "$DATA_DIR/RedPajamaStackExchange_text_document"
    --split "969,30,1"
    --data-cache-path "$OUTPUT_DIR/data-cache"
    --tokenizer-type SentencePieceTokenizer
    --tokenizer-model "$TOKENIZER_MODEL"
    --dwm-valid-data-path "$LAMBADA_PATH"
)

MODEL_ARGS=(
    --model-preset llama2-1.3b
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
    --dwm-load "$DWM_CHECKPOINT"
    --dwm-freeze
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
     "${MODEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}" "${OUTPUT_ARGS[@]}" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q' "${CMD[0]}"; printf ' %q' "${CMD[@]:1}"; printf '\n'
    exit 0
fi
mkdir -p "$OUTPUT_DIR"
exec "${CMD[@]}"

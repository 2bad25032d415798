# shellcheck shell=bash
# What the torchrun launchers pretrain_*.sh share. A launcher sets REPO_DIR, MODEL_PRESET and its
# OUTPUT_DIR default, sources this file (the defaults below: every one can be set from the
# environment), sets its DWM flags (DWM_ARGS) and, to train on other data than SlimPajama's blend,
# TRAIN_DATA (the --data-path values), and ends with `launch "$@"`. The SLURM launchers
# (slurm/*.sbatch) source it through slurm/common.sh and launch with srun instead.
: "${REPO_DIR:?}" "${MODEL_PRESET:?}" "${OUTPUT_DIR:?}"

# Cluster
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
NPROC_PER_NODE=$GPUS_PER_NODE

# Data, tokenizer and outputs
DATA_DIR=${DATA_DIR:-/data/slimpajama}
LAMBADA_PATH=${LAMBADA_PATH:-/data/lambada/lambada_text_document}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-/data/llama2/tokenizer.model}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-$OUTPUT_DIR/checkpoints}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-$OUTPUT_DIR/tensorboard}

# Hyper-parameters: about 21B tokens for either model
TP=${TP:-1}
PP=${PP:-1}
SEQ_LENGTH=${SEQ_LENGTH:-2048}
LR_WARMUP_ITERS=${LR_WARMUP_ITERS:-2000}
case $MODEL_PRESET in
    llama2-370m)  # 40k steps x 256 x 2048 tokens = 21B tokens
        MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-8}
        GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-256}
        TRAIN_ITERS=${TRAIN_ITERS:-40000}
        LR=${LR:-3e-4}
        MIN_LR=${MIN_LR:-3e-5} ;;
    llama2-1.3b)  # 20k steps x 512 x 2048 tokens = 21B tokens
        MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
        GLOBAL_BATCH_SIZE=${GLOBAL_BATCH_SIZE:-512}
        TRAIN_ITERS=${TRAIN_ITERS:-20000}
        LR=${LR:-2e-4}
        MIN_LR=${MIN_LR:-2e-5} ;;
    *) echo "common.sh: no hyper-parameters for the model preset $MODEL_PRESET" >&2; exit 1 ;;
esac

# The training data (--data-path): SlimPajama's own domain proportions (by tokens)
TRAIN_DATA=(
    0.522 "$DATA_DIR/RedPajamaCommonCrawl_text_document"
    0.267 "$DATA_DIR/RedPajamaC4_text_document"
    0.052 "$DATA_DIR/RedPajamaGithub_text_document"
    0.042 "$DATA_DIR/RedPajamaBook_text_document"
    0.046 "$DATA_DIR/RedPajamaArXiv_text_document"
    0.038 "$DATA_DIR/RedPajamaWikipedia_text_document"
    0.033 "$DATA_DIR/RedPajamaStackExchange_text_document"
)

# DWM_ARGS: the DWM trained alongside (DWM_STAGES stages) on DWM_RANKS extra processes.
set_dwm_args() {
    DWM_RANKS=${DWM_RANKS:-1}
    DWM_STAGES=${DWM_STAGES:-5}
    DWM_LR=${DWM_LR:-1e-3}
    DWM_ARGS=(
        --dwm-ranks "$DWM_RANKS"
        --dwm-stages "$DWM_STAGES"
        --dwm-lr "$DWM_LR"
    )
}

# The same, with torchrun: the DWM's extra processes are added on the last node.
train_dwm_alongside() {
    set_dwm_args
    if (( NODE_RANK == NNODES - 1 )); then
        NPROC_PER_NODE=$(( GPUS_PER_NODE + DWM_RANKS ))
    fi
}

# pretrain_dwm.py's flags, grouped as in Megatron-LM's examples.
set_pretrain_args() {
    DATA_ARGS=(
        --data-path "${TRAIN_DATA[@]}"
        --split "969,30,1"
        --data-cache-path "$OUTPUT_DIR/data-cache"
        --tokenizer-type SentencePieceTokenizer
        --tokenizer-model "$TOKENIZER_MODEL"
        --dwm-valid-data-path "$LAMBADA_PATH"
    )
    MODEL_ARGS=(
        --model-preset "$MODEL_PRESET"
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
    OUTPUT_ARGS=(
        --save "$CHECKPOINT_DIR"
        --load "$CHECKPOINT_DIR"
        --save-interval 1000
        --eval-interval 1000
        --eval-iters 10
        --log-interval 10
        --tensorboard-dir "$TENSORBOARD_DIR"
    )
}

# PRETRAIN_CMD: pretrain_dwm.py with the flag groups, DWM_ARGS and "$@" (a flag given twice: the
# last wins).
set_pretrain_command() {
    set_pretrain_args
    PRETRAIN_CMD=("$REPO_DIR/pretrain_dwm.py" "${MODEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}"
                  "${DWM_ARGS[@]}" "${OUTPUT_ARGS[@]}" "$@")
}

# With DRY_RUN=1: prints the command "$@", shell-quoted on one line, and exits.
exit_if_dry_run() {
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        printf '%q' "$1"; printf ' %q' "${@:2}"; printf '\n'
        exit 0
    fi
}

# torchrun pretrain_dwm.py (PRETRAIN_CMD). DRY_RUN=1 prints the command instead of running it.
launch() {
    local distributed_args=(
        --nproc-per-node "$NPROC_PER_NODE"
        --nnodes "$NNODES"
        --node-rank "$NODE_RANK"
        --master-addr "$MASTER_ADDR"
        --master-port "$MASTER_PORT"
    )
    set_pretrain_command "$@"
    local cmd=(torchrun "${distributed_args[@]}" "${PRETRAIN_CMD[@]}")
    exit_if_dry_run "${cmd[@]}"
    mkdir -p "$OUTPUT_DIR"
    exec "${cmd[@]}"
}

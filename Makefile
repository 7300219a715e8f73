# Two commands on a fresh machine: `make train` and `make test` (both install first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch must be installed before anything that depends on torch.
TORCH  ?= torch==2.13.0

.PHONY: install data train bench bench-learning test test-faults test-all clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Bundled default data + tokenizer (deterministic; our own generator).
data: install
	$(BIN)/python -m chunksft.data.bundled

# DATASET=path.jsonl runs the same two-stage job on your own data (README "Training").
train: data
	PATH="$(abspath $(BIN)):$$PATH" DATASET="$(DATASET)" bash launch/train.sh

# CPU benchmark suite (about 25 min on 2 idle cores, plus bench-learning's ~8 min, which needs a
# finished make train): op benches, the end-to-end chunk_sft step (loop vs one-pass eager vs fused,
# growth exponents, ZeRO-3 1/2 ranks), memory vs K, the results table of benchmarks/README.md, then
# the hybrid vs a same-size causal LM at equal wall-clock. Results: benchmarks/results/*.{csv,json,png}.
bench: data
	$(BIN)/python -m benchmarks.bench_chunk_mask
	$(BIN)/python -m benchmarks.bench_chunk_attention --reps 2
	$(BIN)/python -m benchmarks.bench_linear_cross_entropy
	$(BIN)/python -m benchmarks.bench_rms_norm
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m benchmarks.bench_train_step --zero3-steps 12
	$(BIN)/python -m benchmarks.bench_head_memory
	$(BIN)/python -m benchmarks.harness --summary
	$(MAKE) bench-learning

# Learning vs a same-size causal LM at the hybrid's training wall-clock (needs `make train` first):
# benchmarks/results/learning.{csv,json,png}.
bench-learning: data
	$(BIN)/python -m benchmarks.bench_learning

test: data
	$(BIN)/python -m pytest -q --timeout=900 tests

# The whole fault-injection + bad-input suite (make test runs its fast subset): kills, corrupt
# checkpoints, disk full, every bad input of docs/design.md §5 (README "Guarantees").
test-faults: data
	$(BIN)/python -m pytest -q --timeout=1800 --faults -m faults tests

clean:
	rm -rf $(VENV) build *.egg-info chunksft/data/bundled/generated

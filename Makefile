# Aliases for the commands humans and CI both run. Tool settings live in pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: env test test-all run bench lint compare compare-quick clean

# The environment is created on first use and refreshed when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,experiments,fid-test]"
	# The FID tests' PyTorch references; --no-deps: their metadata asks for torchvision, which no test imports.
	$(BIN)/python -m pip install -q --no-deps torch-fidelity==0.4.0 pytorch-fid==0.3.0
	touch $(STAMP)

env: $(STAMP)

# Two workers: much of a test's time is single-threaded tracing and compiling, so the two cores overlap it.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n 2

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

run: $(STAMP)
	$(BIN)/python -m experiments.toy_table --config experiments/configs/toy_table.py --workdir results

bench: $(STAMP)
	-$(BIN)/python -m pip install -q "torch==2.13.0" 2>/dev/null || echo "PyTorch not installable here: benchmarking JAX only"
	$(BIN)/python -m experiments.bench --config experiments/configs/bench.py --workdir results

lint: $(STAMP)
	$(BIN)/ruff check fm_jax experiments tests

clean:
	rm -rf results workdir .pytest_cache

compare: $(STAMP)
	$(BIN)/python -m experiments.compare --config experiments/configs/compare.py --workdir results

compare-quick: $(STAMP)
	$(BIN)/python -m experiments.compare --config experiments/configs/compare.py:quick --workdir results/quick

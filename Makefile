# Two set-up commands for newcomers: `make quickstart` (main job on the embedded synthetic corpus, CPU)
# and `make test`. Both create .venv and install the project if it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install quickstart test test-fast lint bench clean

$(BIN)/.installed: pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-lock.txt
	$(BIN)/pip install -q --no-deps -e ".[dev]"
	touch $@

install: $(BIN)/.installed

quickstart: install
	$(BIN)/python -m mmgt.quickstart

test: install
	$(BIN)/ruff check src tests experiments
	$(BIN)/python -m pytest tests

# the fast tier: everything but the end-to-end, DDP and CLI tests marked slow (a few minutes on 2 idle cores)
test-fast: install
	$(BIN)/ruff check src tests experiments
	$(BIN)/python -m pytest tests -m "not slow"

bench: install
	for f in experiments/bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf outputs multirun data/synthetic

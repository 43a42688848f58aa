# i2vedit: `make demo` and `make test` each set the project up first (one command on a fresh machine).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo app test test-all lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: setup  ## edit the toy world's dancer (model=toy, trained by us) into outputs/demo
	$(BIN)/i2vedit-edit +item=dance output_dir=outputs/demo

app: setup  ## the editing page on http://127.0.0.1:7860
	$(BIN)/i2vedit-app

lint: setup
	$(BIN)/ruff check src tests experiments
	$(BIN)/ruff format --check src tests experiments

format: setup
	$(BIN)/ruff check --fix src tests experiments
	$(BIN)/ruff format src tests experiments

test: lint  ## the fast tier (what CI runs)
	$(BIN)/pytest -q -m "not slow and not gpu"

test-all: lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python experiments/bench_edit.py --model tiny --section "Tiny model, CPU"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

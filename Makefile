# i2vedit: `make demo` and `make test` each set the project up first (one command on a fresh machine).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo app test test-all lint format bench gpu-wheels clean

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

# the packages a GPU machine with PyTorch, transformers, peft and Lightning lacks, as wheels
# to carry there (README: On a GPU); antlr4-python3-runtime 4.9.3 is published as source only
GPU_PYTHON ?= 3.12
WHEELS := wheels
gpu-wheels: setup
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --implementation cp --platform manylinux2014_x86_64 -d $(WHEELS) \
	  diffusers==0.42.1 hydra-core==1.3.8 omegaconf==2.3.1 importlib_metadata==10.2.0
	$(BIN)/python -m pip wheel --quiet --no-deps -w $(WHEELS) antlr4-python3-runtime==4.9.3
	ls -l $(WHEELS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

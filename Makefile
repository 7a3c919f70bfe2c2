# Two commands do all the setup on a fresh machine:
#   make demo   — create .venv, install, run the whole DVC pipeline on the embedded sample
#   make test   — create .venv, install, run the test suite
#   make docs   — build the documentation site (mkdocs build --strict) into site/
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test docs demo lint bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/python -m pip install --quiet --no-cache-dir -e ".[dev,docs,napari,gui-tests,dvc,export,openvino,quantise,bioimageio,validation]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

docs: install
	$(BIN)/mkdocs build --strict --quiet

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@$(BIN)/python -c "import json; m = json.load(open('metrics/metrics.json')); \
	print(f\"validation DSB2018 score {m['dsb_score']:.4f} ({m['n_images']} validation images)\")"

lint: install
	$(BIN)/ruff check pipeline tests benchmarks experiments scripts docs_tools

bench: install
	for b in benchmarks/bench_*.py; do m=benchmarks.$$(basename $$b .py); echo "== $$m"; $(BIN)/python -m $$m || exit 1; done

clean-venv:
	rm -rf $(VENV)

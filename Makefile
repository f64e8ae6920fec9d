# The two commands of the README: `make demo` and `make test` (each sets itself up).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup lint bench screenshot

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh gui

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/napari-unet demo --out-dir demo_output

test: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/npe2 validate napari-unet --imports
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/run_all.py

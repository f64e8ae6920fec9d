# The two commands of the README: `make demo` and `make test` (each sets itself up).
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast setup lint bench screenshot

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh gui

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/napari-unet demo --out-dir demo_output

test: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/npe2 validate napari-unet --imports
	$(BIN)/python -m pytest

# The quicker loop while editing the core: no GUI, nothing marked slow (about 2 minutes).
test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest tests/core -m "not slow" -p no:xvfb -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

# Each benchmark prints a table with the command that produced it (see bench/README.md).
bench: $(VENV)/.installed
	for script in limits segment peers weights train quality export threads; do $(BIN)/python bench/bench_$$script.py || exit 1; done

screenshot: $(VENV)/.installed
	$(BIN)/python scripts/screenshot.py

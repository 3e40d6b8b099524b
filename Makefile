# Two entry points for a fresh machine: `make demo` and `make test`.
# Each sets itself up: a virtualenv in .venv with torch pinned to the CPU build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test demo demo-quick demo-remote bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: install
	$(BIN)/dp-demo --out out/demo

demo-quick: install
	$(BIN)/dp-demo --quick --out out/demo-quick

demo-remote: install
	$(BIN)/dp-demo --remote

bench: install
	$(BIN)/python bench/latency.py

clean:
	rm -rf $(VENV) out

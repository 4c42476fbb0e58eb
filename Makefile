# The README's two commands are `make demo` (set-up + the main job on the
# embedded default dataset) and `make test` (set-up + the test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN_DIR ?= runs/demo

.PHONY: setup demo test bench clean

# Creates the virtual environment, installs the dependencies and installs the
# project in editable mode, which compiles the DeformableConv2D op (CPU, and
# CUDA when nvcc is on PATH).
$(VENV)/.installed: requirements.txt requirements-test.txt setup.py pyproject.toml $(wildcard custom_ops/cc/*/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip "setuptools>=68" wheel
	$(PY) -m pip install -q -r requirements-test.txt
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

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

# The main job on the embedded default dataset: train (test metrics printed against the
# constant-predictor baseline), export for TF Serving, then annotate a few test images.
demo: setup
	$(PY) -m e2e_tf.train --flagfile=configs/default.cfg --model_dir=$(RUN_DIR)
	$(PY) -m e2e_tf.export --model=$(RUN_DIR) --export_dir=$(RUN_DIR)/export
	$(PY) -m e2e_tf.write_samples --dataset=visual_concepts --split=test --count=4 --output_dir=$(RUN_DIR)/samples
	$(PY) -m e2e_tf.annotate --model=$(RUN_DIR)/export $(RUN_DIR)/samples

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info

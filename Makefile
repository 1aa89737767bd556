# One command each, from a fresh clone: `make test`, `make reproduce`, `make bench`.
# The venv is made on first use; torch is pinned to the build this machine installs from local disk.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test reproduce bench
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

reproduce: setup
	$(PY) -m experiments.reproduce

bench: setup
	$(PY) benchmarks/speed.py --device cpu
	$(PY) benchmarks/report.py

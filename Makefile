# Two commands a reader needs: `make lab` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stamp's name carries a hash of requirements.txt and pyproject.toml, so editing either
# reinstalls, and an unchanged environment is never installed twice.
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha1sum | cut -c1-12)
JOBS ?= 2

.PHONY: lab test lint outputs bench clean-venv

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

# Root in a container needs --allow-root; everyone else gets the default.
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)
lab: $(STAMP)
	$(BIN)/jupyter lab $(ALLOW_ROOT) --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/chapters/00_introduction.ipynb

lint: $(STAMP)
	$(BIN)/ruff check utils tests bench tools data

# One PyTorch thread per test process: with JOBS processes on JOBS cores, more threads only
# wait for each other (measured on 2 cores: a small training step got about 5x slower).
test: $(STAMP) lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) --dist loadfile

# Re-execute notebooks in place so stored outputs come from a clean top-to-bottom run.
# `make outputs` does all of them; `make outputs NB=chapters/01_tokenization.ipynb` one.
NB ?= chapters/*.ipynb solutions/*.ipynb
outputs: $(STAMP)
	$(BIN)/python tools/execute_notebooks.py $(NB)

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

clean-venv:
	rm -rf $(VENV)

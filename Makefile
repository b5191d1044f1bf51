# Everyday commands. `make` alone lists them.
PY ?= python

.PHONY: help install quickstart test test-full test-gpu lint format hooks

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install:  ## the package with its dev extras, editable
	$(PY) -m pip install -e ".[dev]"

quickstart:  ## train + evaluate on the embedded pages (a few minutes on 2 CPU cores)
	$(PY) -m training experiment=quickstart

test:  ## the default suite (what CI runs first; slow and gpu tests excluded)
	$(PY) -m pytest

test-full:  ## the default suite, then the slow tests (notebooks, sweeps, model selection, ...)
	$(PY) -m pytest
	$(PY) -m pytest -m slow

test-gpu:  ## the CUDA tests (a GPU machine)
	$(PY) -m pytest -m gpu

lint:  ## ruff lint and format check (what pre-commit runs)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format:  ## fix what ruff can fix, format everything
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

hooks:  ## install the pre-commit hooks (ruff, ruff-format, nbstripout)
	$(PY) -m pip install pre-commit
	pre-commit install

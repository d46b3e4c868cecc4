# aiworker developer commands. `make demo` runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; other torch builds work too (pip install 'aiworker[torch]').
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-quick lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

demo: install
	$(PY) -m aiworker.demo

test: install
	$(PY) -m pytest -q

test-quick: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check aiworker tests bench
	$(VENV)/bin/ruff format --check aiworker tests bench
	$(VENV)/bin/mypy aiworker

bench: install
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

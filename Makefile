# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment in .venv and installs the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench compat lint clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m avalanche_sparcl.demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Avalanche's own tests, as shipped and with SparCL injected into every strategy (docs/compatibility.md)
compat: $(STAMP)
	$(PY) compat/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check avalanche_sparcl tests benchmarks compat

clean:
	rm -rf $(VENV) *.egg-info

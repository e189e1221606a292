# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment in .venv and installs the package into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench compat test-compat-torch lint clean

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

# The package beside an older torch it must keep (not part of `make test`): a second venv with torch and
# its torchvision installed first, then the package; torch's version is checked after the install, then
# tests/test_install.py trains 3 epochs of Split Digits there (tests/test_install.py says why --noconftest).
COMPAT_TORCH ?= 2.13.0
COMPAT_TORCHVISION ?= 0.28.0
COMPAT_VENV ?= .venv-torch213
COMPAT_PY := $(COMPAT_VENV)/bin/python

test-compat-torch:
	$(PYTHON) -m venv $(COMPAT_VENV)
	echo '*' > $(COMPAT_VENV)/.gitignore
	$(COMPAT_PY) -m pip install --quiet torch==$(COMPAT_TORCH) torchvision==$(COMPAT_TORCHVISION)
	$(COMPAT_PY) -m pip install --quiet -e . pytest
	$(COMPAT_PY) -m pip show torch | grep -E '^Version: $(COMPAT_TORCH)(\+.*)?$$'
	$(COMPAT_PY) -c "import torch; print('torch', torch.__version__)"
	SPARCL_COMPAT_TORCH=$(COMPAT_TORCH) $(COMPAT_PY) -m pytest -q -rs -s --noconftest tests/test_install.py

lint: $(STAMP)
	$(VENV)/bin/ruff check avalanche_sparcl tests benchmarks compat

clean:
	rm -rf $(VENV) $(COMPAT_VENV) *.egg-info

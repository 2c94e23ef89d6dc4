# The README's two commands. Both create .venv if needed and install everything into it first.
#   make demo   — set up, then run the main job on the embedded demo data
#   make test   — set up, then run the whole test suite (what CI runs through .ci/run)
# TORCH_SPEC picks the PyTorch build, e.g. `make demo TORCH_SPEC='torch==2.5.1'`; the default is the CPU build
# pinned for this project's machines (an unpinned `torch` pulls a multi-GB CUDA build).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stdvsr-installed

.PHONY: demo test install clean-venv

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) pipelines/demo.py

test: $(STAMP)
	$(PY) -m pytest -ra

clean-venv:
	rm -rf $(VENV)

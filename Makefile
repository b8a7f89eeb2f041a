# The README's two commands. Both create .venv when missing, install the CPU build of torch first
# (a looser requirement would pull several GB of CUDA wheels), then the project; the stamp makes
# the second run skip the install.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: install test demo lint
install: $(STAMP)

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest

demo: install
	$(PY) -m workbench demo --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check workbench app tests benchmarks examples

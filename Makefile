# The two commands the README opens with: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# DATA: cifar10 (download), a cifar-10-python.tar.gz, or an image folder such as the shared JPEGs.
DATA   ?= cifar10
OUT    ?=
ARGS   ?=

.PHONY: train test install dev clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

train: $(VENV)/.installed
	$(VENV)/bin/alexnet train --data $(DATA) $(if $(OUT),--out $(OUT)) $(ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

# `make test` installs everything the suite needs (Debian packages, services, the venv) and runs it.
VENV ?= .venv
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: test demo install system-deps services lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0 -e '.[torch,test]'
	touch $@

install: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

services:
	bash scripts/services.sh

test: system-deps services install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/observatory demo

lint: install
	$(VENV)/bin/ruff check .

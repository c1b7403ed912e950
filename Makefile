# Two set-up-and-go targets (see README): `make repro` and `make test`.
# Both create the project virtualenv .venv on first use and install the
# project into it, with the text and audio extras (.[nlp]: the SetFit
# experiment; .[audio]: the speech separation); later calls reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: repro test install clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,nlp,audio]'
	touch $(STAMP)

install: $(STAMP)

repro: $(STAMP)
	dvc repro

test: $(STAMP)
	pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)

# Set-up commands that work on a fresh machine (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Never reach for a model hub at run time: a lookup fails fast instead of hanging.
export HF_HUB_OFFLINE := 1

.PHONY: install test test-all demo clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

demo: install
	$(BIN)/python -m fastmetro demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache

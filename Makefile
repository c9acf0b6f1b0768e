# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## Serve on 127.0.0.1:8080 with SQLite and blobs under ./var (migrations applied first).
run: $(STAMP)
	$(BIN)/drimhub serve

## Run the test suite on SQLite and PostgreSQL (PostgreSQL cases skip when no server answers,
## fail instead under CI=1 or DRIMHUB_TEST_REQUIRE_POSTGRES=1).
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache

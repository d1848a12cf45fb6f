# nightrec quick start:  make run   (nightly job on synthetic data)   make test
# make pack: the environment archive for a Spark cluster's executors (docs/running-in-production.md)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
DS     ?= 2024-06-30
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.nightrec-installed

.PHONY: setup run test bench check-java pack clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || \
	  { echo "nightrec needs Python 3.11 (found $$($(PYTHON) --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

check-java:
	@sh infra/check-java.sh

run: setup check-java
	$(BIN)/nightrec nightly --ds $(DS)

test: setup check-java
	$(BIN)/python -m pytest -q

ARCHIVE ?= nightrec-env.tar.gz
pack: setup
	$(BIN)/python -c 'import sys; from jobs.pack import pack_environment; print(pack_environment(sys.argv[1], force=True))' $(ARCHIVE)

clean:
	rm -rf warehouse .pytest_cache nightrec-env.tar.gz

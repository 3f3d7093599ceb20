# exoacq: `make demo` and `make test` set themselves up on a bare machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# Idempotent: re-runs only when the project's dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "exoacq needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { apt-get update && apt-get install -y python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/exoacq demo

# Two worker processes: most tests wait on daemons, sockets and simulated hardware, so two
# share a 2-core machine well; a test file's tests stay on one worker (module fixtures).
# Tests that assert live acquisition keeps up (marker realtime) then run alone: a second test
# process competing for the cores would make a simulated camera miss frames.
test: install
	$(BIN)/python -m pytest -ra -n 2 --dist loadfile -m "not realtime"; parallel=$$?; \
	$(BIN)/python -m pytest -ra -m realtime; alone=$$?; \
	test $$parallel -eq 0 -a $$alone -eq 0

clean:
	rm -rf $(VENV) build *.egg-info

# exoacq: `make demo` and `make test` set themselves up on a bare machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install chromium demo test clean

install: $(STAMP) chromium

# Idempotent: re-runs only when the project's dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "exoacq needs Python >= 3.11 (found $$($(PYTHON) --version))"; exit 1; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { apt-get update && apt-get install -y python3-venv; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# Debian's chromium for the browser tests (Playwright drives it; its own browser download is not used).
# Quick when installed (one `command -v`); installed with apt where it is usable (root, or sudo without
# a password), apt-get update only when the package is unknown; otherwise install goes on and the
# browser tests skip, saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || test -x "$${EXOACQ_CHROMIUM:-/nonexistent}" || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "make: no chromium and apt is not usable here (not root, no sudo): the browser tests will be skipped"; exit 0; fi; \
	  command -v apt-get >/dev/null || { echo "make: no chromium and no apt-get: the browser tests will be skipped"; exit 0; }; \
	  apt-cache show chromium >/dev/null 2>&1 || $$sudo apt-get update -q || true; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q chromium \
	    || echo "make: could not install chromium: the browser tests will be skipped"; }

demo: install
	$(BIN)/exoacq demo

# Three worker processes on the 2-core CI machine: most tests wait on daemons, sockets and simulated
# hardware (one and a half cores busy on average with two workers); three fill the idle time (measured
# 2026-12-04: the parallel part 528 s with 2, 417 s with 3, 422 s with 4, all passing). A test
# file's tests stay on one worker (module fixtures), and the
# longest files go first (tests/conftest.py: LONGEST_FILES; --no-loadscope-reorder keeps that order).
# Tests that assert live acquisition keeps up (marker realtime) then run alone: a second test
# process competing for the cores would make a simulated camera miss frames.
test: install
	$(BIN)/python -m pytest -ra --durations=25 -n 3 --dist loadfile --no-loadscope-reorder -m "not realtime"; parallel=$$?; \
	$(BIN)/python -m pytest -ra --durations=10 -m realtime; alone=$$?; \
	test $$parallel -eq 0 -a $$alone -eq 0

clean:
	rm -rf $(VENV) build *.egg-info

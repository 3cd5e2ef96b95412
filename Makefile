# mcuforge: `make demo` and `make test` set everything up on a fresh Debian machine.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mcuforge-installed
DEB_PACKAGES := gcc make gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm espeak-ng sox postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_WORKERS ?= 2

.PHONY: all setup sysdeps venv demo test test-all clean

all: demo

setup: sysdeps venv

# Install only the Debian packages that are missing (dpkg-query is cheap; apt-get is not).
sysdeps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "Debian packages present."; fi

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (mcuforge needs Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: setup
	$(VENV)/bin/mcuforge demo -o out/demo

test: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS)

test-all: setup
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) -m ''

clean:
	rm -rf out build .pytest_cache .hypothesis

# The two entry points of the README: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck pytest bench clean system-packages

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/tether run tether.demo:app --bind 127.0.0.1:8080 --debug-bind 127.0.0.1:8001

test: lint typecheck pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy

# Debian packages the suite runs for real: the rolling update through a load balancer
# (haproxy, wrk), the console in a headless browser (chromium), TLS certificates
# (openssl), a listener's accept queue (ss, from iproute2), the inits a container runs
# tether under (tini, dumb-init). Each entry is COMMAND:PACKAGE.
SYSTEM_PACKAGES := haproxy:haproxy wrk:wrk chromium:chromium openssl:openssl ss:iproute2 \
	tini:tini dumb-init:dumb-init
system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do command -v $${p%%:*} >/dev/null || echo $${p#*:}; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null \
		|| { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing >/dev/null; } \
		|| echo "could not install $$missing (not root?): install them, or the tests that need them skip or fail"; \
	fi

pytest: $(BIN)/.installed system-packages
	$(BIN)/pytest

# Side-by-side figures against the peers (never part of `make test`): about 15 minutes here.
bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[test,bench]'
	cd benchmarks && ../$(BIN)/python suite.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache

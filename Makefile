# ctbpf: every target runs as root on Debian 12; `setup` is idempotent and fast.
VENV   := .venv
PY     := $(VENV)/bin/python
PYTEST := $(PY) -m pytest -ra

.PHONY: setup demo test unit conformance bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/ctbpf demo

test: setup
	$(PYTEST) tests

unit: setup
	$(PYTEST) tests/unit

conformance: setup
	@if [ -d tests/conformance ]; then $(PYTEST) tests/conformance; \
	else echo "no conformance suite yet (tests/conformance does not exist)"; fi

bench: setup
	@if [ -f bench/__main__.py ]; then $(PY) -m bench; \
	else echo "no benchmarks yet (bench/__main__.py does not exist)"; fi

clean:
	@if [ -x scripts/cleanup-lab.sh ]; then scripts/cleanup-lab.sh; \
	elif [ -f scripts/cleanup-lab.sh ]; then bash scripts/cleanup-lab.sh; fi
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

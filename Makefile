# Two set-up commands: `make demo` (the main job on the embedded demo model) and `make test`; `make check` runs the
# linters, mypy and the wheel's smoke test (scripts/wheel_smoke.sh), and the docs build where there is one.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.budcache-installed

.PHONY: demo test check bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo,test,quant,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/budcache demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest

check: $(STAMP)
	$(BIN)/ruff check budcache tests bench
	$(BIN)/ruff format --check budcache tests bench
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/wheel_smoke.sh
	if [ -f mkdocs.yml ]; then $(MAKE) docs; fi

bench: $(STAMP)
	$(BIN)/python bench/search_optimality.py

clean:
	rm -rf $(VENV) demo-out bench-out

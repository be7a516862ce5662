# Two set-up commands: `make demo` (the main job on the embedded demo model) and `make test`; `make check` runs the
# linters, mypy and the wheel's smoke test (scripts/wheel_smoke.sh), then `make docs`, which builds the
# documentation site into site/.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.budcache-installed
DOCS_STAMP := $(VENV)/.budcache-docs

.PHONY: demo test check docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[demo,test,quant,dev]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

demo: $(STAMP)
	$(BIN)/budcache demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site   # the variable silences a banner of mkdocs-material

check: $(STAMP)
	$(BIN)/ruff check budcache tests bench
	$(BIN)/ruff format --check budcache tests bench
	$(BIN)/mypy
	PYTHON=$(BIN)/python scripts/wheel_smoke.sh
	$(MAKE) docs

bench: $(STAMP)
	$(BIN)/python bench/search_optimality.py

clean:
	rm -rf $(VENV) demo-out bench-out site

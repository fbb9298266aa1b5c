# The README's two commands: `make demo` and `make test`. Each creates .venv if missing and
# installs what it needs, so a fresh checkout needs nothing else.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test docs bench chaos sim-goals clean

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[algorithms,dev,docs]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scantide demo

test: $(STAMP)
	$(PY) -m pytest -q

# The documentation site (mkdocs.yml) into site/; --strict: a broken link or anchor fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

chaos: $(STAMP)
	SCANTIDE_CHAOS_SCANS=200 $(PY) -m pytest -q -m chaos -s

sim-goals: $(STAMP)
	$(PY) -m pytest -q -m sim_goals tests/autoscaler/test_simulate.py

bench: $(STAMP)
	$(PY) benchmarks/enqueue.py

clean:
	rm -rf $(VENV) .scantide site

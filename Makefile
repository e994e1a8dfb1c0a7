# Two commands do everything on a fresh machine (Python 3.10-3.12 with venv):
#   make demo   set up, then run the whole pipeline offline on the bundled demo photos
#   make test   set up, then run the test suite
# Set-up is idempotent: it reinstalls only when pyproject.toml or this Makefile changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two pytest workers for the two cores; each loads TensorFlow once.
PYTEST_ARGS ?= -n 2 --dist loadfile

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,export,ui,ray,vit]"
	touch $(STAMP)

# The `detcrop ui` browser tests drive Debian's Chromium (never a browser Playwright downloads).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/detcrop demo --out demo-out

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# The README's two commands: `make run` (set up, then the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install run test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@# Debian's Chromium for the demo's browser test (Playwright drives it; it downloads no browser).
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: Chromium could not be installed (apt-get install chromium): the demo's browser test will be skipped"
	touch $@

# Main job: train the default model on the embedded digits set (a new folder under runs/),
# then evaluate its best checkpoint.
run: install
	$(VENV)/bin/mambaout models
	d=runs/digits-$$(date +%Y%m%d-%H%M%S) && $(VENV)/bin/mambaout train --output $$d && \
	  $(VENV)/bin/mambaout validate --checkpoint $$d/best.pth

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache

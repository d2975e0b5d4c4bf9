# `make demo`: set up and run the main job.  `make test`: set up and run the tests.
# Everything installs into a project-local virtual environment, .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch on this kind of machine; override with `make TORCH=torch==2.5.1 ...`.
TORCH ?= torch==2.13.0
# Optional extras installed with minisd: `make test EXTRAS=dev,web` also runs the web page's tests (CI does).
EXTRAS ?= dev
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# MNIST is read from $MINISD_DATA; next to this checkout, ../shared/data holds it.
ifeq ($(MINISD_DATA),)
  ifneq ($(wildcard ../shared/data/mnist),)
    export MINISD_DATA := $(abspath ../shared/data)
  endif
endif

.PHONY: setup demo test test-slow serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/minisd demo --out outputs/demo --overwrite

# The suite on two workers (pytest-xdist), each test on one thread: within 5 minutes on 2 cores. The few checks
# that need minutes of training, the browser test and the crash test of every pair of save points are marked
# slow and run by `make test-slow` (CI runs both).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" --durations=15

test-slow: setup
	$(BIN)/python -m pytest -m slow

# The local web page (the optional extra `web`, Gradio): open http://127.0.0.1:7860/
serve:
	$(MAKE) setup EXTRAS=dev,web
	$(BIN)/minisd serve

clean:
	rm -rf $(VENV) outputs runs .pytest_cache

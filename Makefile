# Two entry points, as the README says:
#   make serve   install, then serve the embedded demo models on :8500 (metrics on :9000)
#   make test    install, then run the test suite (what .ci/run runs)
# Both install into their own virtual environment, .venv in the checkout, made without the
# system's site-packages (and with PYTHONPATH and the user site ignored), so only what
# setup.py declares can be imported: an undeclared dependency fails here as it would for a user.
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
PIP_FLAGS := -q --disable-pip-version-check -c requirements/constraints.txt
EXTRAS ?= all,test

unexport PYTHONPATH PYTHONHOME PYTHONSTARTUP
export PYTHONNOUSERSITE := 1

.PHONY: install serve test test-all bench demo-model demo-check heavy-model fuzz clean-venv

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

install: $(VENV_PYTHON)
	$(PIP) install $(PIP_FLAGS) -r requirements/build.txt
	$(PIP) install $(PIP_FLAGS) --no-build-isolation -e ".[$(EXTRAS)]"

serve: install   ## both demo models, as the README says (plain `navi serve` serves models/home only)
	$(VENV_PYTHON) -m navi.cli.main serve --model-dir models/home --model-dir models/dense

test: install
	$(VENV_PYTHON) -m pytest -m "not slow" -q -p no:cacheprovider

test-all: install
	$(VENV_PYTHON) -m pytest -q -p no:cacheprovider

bench: install
	$(VENV_PYTHON) -m navi.cli.main bench convert --json benchmarks/convert.json

demo-model: install   ## rewrite models/home and models/dense (deterministic)
	$(VENV_PYTHON) -m navi.cli.main demo --out models

demo-check: install   ## fail if models/ differs from a rebuild
	$(VENV_PYTHON) -m navi.cli.main demo --out models --check

heavy-model: install  ## heavy benchmark model into the navi cache
	$(VENV_PYTHON) -m navi.cli.main demo --heavy

fuzz: install         ## the decoder fuzz run (slow; not in CI)
	$(VENV_PYTHON) -m pytest -m slow -q tests/unit/test_bpr_fuzz.py

clean-venv:           ## start the next install from an empty environment
	rm -rf $(VENV)

.PHONY: fuzz-native
FUZZ_RUNS ?= 10000000
fuzz-native: install  ## coverage-guided fuzzing of the compiled decoder and scanner under ASan+UBSan (slow; not in CI)
	PYTHON=$(VENV_PYTHON) sh tests/fuzz/native.sh $(FUZZ_RUNS)

# Two entry points, as the README says:
#   make serve   install, then serve the embedded demo models on :8500 (metrics on :9000)
#   make test    install, then run the test suite (what .ci/run runs)
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PIP_FLAGS := -q --disable-pip-version-check -c requirements/constraints.txt
EXTRAS ?= all,test

.PHONY: install serve test test-all bench demo-model demo-check heavy-model fuzz

install:
	$(PIP) install $(PIP_FLAGS) -r requirements/build.txt
	$(PIP) install $(PIP_FLAGS) --no-build-isolation -e ".[$(EXTRAS)]"

serve: install
	$(PYTHON) -m navi.cli.main serve

test: install
	$(PYTHON) -m pytest -m "not slow" -q -p no:cacheprovider

test-all: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench: install
	$(PYTHON) -m navi.cli.main bench convert --json benchmarks/convert.json

demo-model:   ## rewrite models/home and models/dense (deterministic)
	$(PYTHON) -m navi.cli.main demo --out models

demo-check:   ## fail if models/ differs from a rebuild
	$(PYTHON) -m navi.cli.main demo --out models --check

heavy-model:  ## heavy benchmark model into the navi cache
	$(PYTHON) -m navi.cli.main demo --heavy

fuzz:         ## the decoder fuzz run (slow; not in CI)
	$(PYTHON) -m pytest -m slow -q tests/unit/test_bpr_fuzz.py

.PHONY: fuzz-native
FUZZ_RUNS ?= 10000000
fuzz-native:  ## coverage-guided fuzzing of the compiled decoder and scanner under ASan+UBSan (slow; not in CI)
	PYTHON=$(PYTHON) sh tests/fuzz/native.sh $(FUZZ_RUNS)

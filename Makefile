# The two commands of the README. Each creates .venv on first use and installs modarb into it.
# CPU machines pin torch through constraints-cpu.txt (an unpinned torch pulls CUDA wheels);
# on a GPU machine run `make CONSTRAINTS= demo` inside an environment that has your torch.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints-cpu.txt
BIN := $(VENV)/bin
STAMP := $(VENV)/.modarb-installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast test-newest install

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/modarb reproduce --out reports/demo

# Tests run one torch thread each (tests/conftest.py), so one worker per core keeps every core busy;
# worksteal rebalances when a worker is left with the long end-to-end runs. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= auto
# --durations lists the slowest tests after every run: where the suite's time goes is always in view.
PYTEST := $(BIN)/python -m pytest --durations=25 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

test: $(STAMP)
	$(PYTEST)

# Everything but the tests marked slow (pyproject.toml says which): the quick check while editing.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

# The fast tests in a second environment where transformers and lm-eval float to the newest versions
# pyproject.toml allows (the other end of the tested range; CI runs both).
test-newest:
	$(MAKE) VENV=.venv-newest CONSTRAINTS=constraints-newest.txt test-fast
	.venv-newest/bin/python -m pip list 2>/dev/null | grep -iE '^(transformers|lm.eval|torch) '

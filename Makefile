# token-fabric: `make demo` runs the fabric for real on this machine; `make test` runs the tests.
PYTHON ?= python3
VENV   ?= .venv
EXTRA  ?= cpu
STAMP  := $(VENV)/.installed-$(EXTRA)
BIN    := $(VENV)/bin

.PHONY: install demo test test-unit test-integration test-shuffled model bench clean

# Reinstalls only when the project's dependency files change.
$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh $(EXTRA)
	@touch $(STAMP)

install: $(STAMP)

model: install
	$(BIN)/fabric build-model

demo: install
	$(BIN)/fabric demo

test: install
	$(BIN)/python -m pytest -q --durations=15 tests

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

# The fabric's suites in a shuffled order (SEED=<n> to repeat one; destructive tests stay last).
test-shuffled: install
	$(BIN)/python -m pytest -q --random-order-bucket=global \
		$(if $(SEED),--random-order-seed=$(SEED)) tests/integration tests/reliability

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test check lint typecheck bench fuzz venv tools clean

venv: $(VENV)/.installed

# uv installs the environment in seconds (pip takes ~35 s); pip stays the fallback.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv || true
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]' \
	  || $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# Local use serves plain HTTP, so the session cookie must not require HTTPS.
run: venv
	OMNITUTOR_DEV_HTTP=$${OMNITUTOR_DEV_HTTP:-1} $(BIN)/omnitutor serve

# The tests drive nginx, shellcheck, systemd-analyze and chromium; install them if missing.
tools:
	ops/test-tools.sh

test: venv tools
	$(BIN)/python -m pytest

# Hostile input over every route (tests/test_fuzz.py), many more generated cases than the
# suite runs: no 5xx, the envelope on every refusal. FUZZ_EXAMPLES sets how many per test.
# Then schemathesis over the OpenAPI document (tests/test_openapi.py), 500 examples each.
fuzz: venv
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest tests/test_fuzz.py -q
	OMNITUTOR_FUZZ_EXAMPLES=$${OMNITUTOR_FUZZ_EXAMPLES:-500} $(BIN)/python -m pytest tests/test_openapi.py -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy


check: lint typecheck test

bench: venv
	$(BIN)/omnitutor bench eventstore
	$(BIN)/omnitutor bench projections
	$(BIN)/omnitutor bench lessons
	$(BIN)/omnitutor bench assets
	$(BIN)/omnitutor bench load
	$(BIN)/omnitutor bench events

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

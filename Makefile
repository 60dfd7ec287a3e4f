# The two README commands: `make run` and `make test`. Both set up .venv on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:12])")
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install migrate run worker test lint typecheck pytest format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[cpu,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# ONNX Runtime Web for the console's "run in this browser", from the npm registry at the
# versions app/console/package-lock.json pins (npm checks each file's integrity). Without npm
# the console still works; only that switch says the runtime is missing.
CONSOLE_VENDOR := app/console/node_modules/.package-lock.json

$(CONSOLE_VENDOR): app/console/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix app/console --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else \
		echo "npm not found: the console cannot run models in the browser (install Node.js)"; \
	fi

install: $(STAMP) $(CONSOLE_VENDOR)

migrate: install
	$(BIN)/python -m app.cli migrate

# API on $(HOST):$(PORT) and a Celery worker on the embedded SQLite broker; Ctrl-C stops both.
run: install
	$(BIN)/python -m app.cli run --host $(HOST) --port $(PORT)

worker: install
	$(BIN)/python -m app.cli worker

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy app worker models_store smallvision

pytest: install
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .mypy_cache .pytest_cache .ruff_cache app/console/node_modules

# Everything a fresh machine needs: `make run`, `make test`, `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.toml
DEMO_PORT ?= 8787
DEMO_PROXY_PORT ?= 8788

.PHONY: install run test lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/recorder run --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check recorder tests bench alembic
	$(BIN)/ruff format --check recorder tests bench alembic
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

# A simulated daemon and the recorder side by side; watch `recorder sessions` fill up.
demo: $(STAMP)
	@rm -f demo.db demo.db-wal demo.db-shm
	@printf '[daemon]\nurl = "ws://127.0.0.1:$(DEMO_PORT)"\n[proxy]\nlisten = "127.0.0.1:$(DEMO_PROXY_PORT)"\n[storage]\nurl = "sqlite:///demo.db"\n' > demo.toml
	@set -e; \
	$(BIN)/recorder simulate --port $(DEMO_PORT) --sessions 12 --session-interval 1 --seed 7 --status-interval 5 & sim=$$!; \
	$(BIN)/recorder run --config demo.toml 2>demo.log & rec=$$!; \
	trap 'kill $$rec $$sim 2>/dev/null; wait $$rec $$sim 2>/dev/null' EXIT INT TERM; \
	for i in 1 2 3 4 5 6 7 8; do \
		sleep 2; clear 2>/dev/null || true; echo "recorder sessions (demo $$i/8, log in demo.log)"; \
		$(BIN)/recorder sessions --database demo.db --limit 15 || true; \
	done; \
	$(BIN)/recorder status --database demo.db

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo.db demo.db-wal demo.db-shm demo.log demo.toml

# Everything a fresh machine needs: `make run`, `make test`, `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config.example.toml

.PHONY: install run test lint demo bench screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/recorder run --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check recorder tests bench alembic docs
	$(BIN)/ruff format --check recorder tests bench alembic docs
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -n 2

# The story in two minutes: a simulated daemon, the recorder, and a UI-like client
# talking to the daemon through the recorder's proxy; then what the recorder saw, and
# the web console on it, which stays up until Ctrl-C.
# Ports the OS says are free, not a real daemon's 8787 and 8788 (DEMO_PORT=8787 and
# DEMO_PROXY_PORT=8788 choose them). The daemon and the recorder run in process groups
# of their own (ALONE): Ctrl-C, or `timeout`, signals the shell's group alone, and the
# shell stops each of them with one signal: the recorder stops cleanly, not "at once
# on a second signal".
FREE_PORTS = $(BIN)/python -c 'import socket; s = [socket.socket() for _ in range(4)]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*(x.getsockname()[1] for x in s))'
ALONE = $(BIN)/python -c 'import os, sys; os.setpgid(0, 0); os.execv(sys.argv[1], sys.argv[1:])'

demo: $(STAMP)
	@rm -f demo.db demo.db-wal demo.db-shm demo.sessions
	@set -e; \
	set -- $$($(FREE_PORTS)); \
	port=$${DEMO_PORT:-$$1}; proxy=$${DEMO_PROXY_PORT:-$$2}; serve=$$3; web=$${DEMO_WEB_PORT:-$$4}; \
	printf '[daemon]\nurl = "ws://127.0.0.1:%s"\n[proxy]\nlisten = "127.0.0.1:%s"\n[storage]\nurl = "sqlite:///demo.db"\ncommit_interval = 0.2\n[web]\nlisten = "127.0.0.1:%s"\n' $$port $$proxy $$web > demo.toml; \
	$(ALONE) $(BIN)/recorder simulate --port $$port --sessions 3 --session-interval 2 --seed 7 --status-interval 5 2>demo-daemon.log & sim=$$!; \
	$(ALONE) $(BIN)/recorder run --config demo.toml >demo.log 2>&1 & rec=$$!; \
	stopped=; \
	stop() { [ -n "$$stopped" ] && return 0; stopped=1; kill $$rec $$sim 2>/dev/null || true; wait $$rec $$sim 2>/dev/null || true; echo "stopped (see demo.log)"; }; \
	trap 'stop; exit 0' INT TERM; trap stop EXIT; \
	echo "A UI spawns two sessions through the recorder's proxy (ws://127.0.0.1:$$proxy)..."; \
	$(BIN)/python -m recorder.simulator.ui ws://127.0.0.1:$$proxy --sessions 2 > demo.sessions; \
	sleep 1; sid=$$(head -1 demo.sessions); \
	echo; echo "\$$ recorder sessions"; $(BIN)/recorder sessions --database demo.db; \
	echo; echo "\$$ recorder show $$sid"; $(BIN)/recorder show --database demo.db $$sid; \
	echo; echo "\$$ recorder replay $$sid --speed 4 --max-idle 1"; \
	$(BIN)/recorder replay --database demo.db $$sid --speed 4 --max-idle 1; \
	echo; echo "Try next (the recorder keeps running until you press Ctrl-C here, or see demo.log):"; \
	echo "  $(BIN)/recorder tail --database demo.db"; \
	echo "  $(BIN)/recorder replay --database demo.db $$sid --format jsonl --instant"; \
	echo "  $(BIN)/recorder export --database demo.db $$sid --output demo.cast   # then: asciinema play demo.cast"; \
	echo "  $(BIN)/recorder replay --database demo.db $$sid --serve 127.0.0.1:$$serve   # point a UI at it"; \
	echo "  $(BIN)/recorder stats --database demo.db"; \
	echo; echo "The web console, up until Ctrl-C: http://127.0.0.1:$$web/"; \
	wait $$rec

# Every benchmark at its defaults; `make bench HISTORY=1` also appends each one's
# headline figures to docs/benchmarks-history.md.
bench: $(STAMP)
	@set -e; for b in ingest proxy query replay purge compact tail web alerts; do \
		echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py $(if $(HISTORY),--history,); done

# The README's pictures of the web console, taken in the system's Chromium.
screenshots: $(STAMP)
	$(BIN)/python docs/screenshots.py

clean:
	rm -rf $(VENV) build dist *.egg-info demo.db demo.db-wal demo.db-shm demo.log demo-daemon.log demo.toml demo.sessions demo.cast

# One Makefile that people and CI both call. Every target creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-soak bench-queues bench-scale clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/bulkgen demo

# Coverage of the whole suite, subprocesses included, held to the floor in pyproject.toml
# ([tool.coverage.report] fail_under). A partial run: make test COV= PYTEST_ARGS=tests/unit
COV ?= --cov=bulkgen --cov-report=term
test: $(STAMP)
	$(BIN)/python -m pytest -q $(COV) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The peers the benchmarks compare against (the bench group), on top of the dev install.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/simulator.py
	$(BIN)/python bench/enqueue.py
	$(BIN)/python bench/claim.py
	$(BIN)/python bench/cache.py
	$(BIN)/python bench/ratelimit.py
	$(BIN)/python bench/capacity.py --workers 1 3
	$(BIN)/python bench/render.py
	$(BIN)/python bench/markdown.py
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/economy.py

# Ten minutes or more: 20,000 jobs through a fleet losing a worker every 20 s.
bench-soak: $(STAMP)
	$(BIN)/python bench/soak.py

# Up to an hour at the defaults (10,000 jobs at concurrency 1 is the slow part): bulkgen's
# own queue overhead against PgQueuer and Procrastinate, from the bench extra.
bench-queues: $(BENCH_STAMP)
	$(BIN)/python bench/queues.py

# Half an hour or more at the defaults (a 500,000-job backlog over 5,000 accounts; plain
# FIFO's B waits behind 50,000 jobs): the fair claim's cost and fairness at scale.
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/fairness.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

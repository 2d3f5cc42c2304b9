"""Chaos scenarios: bulkgen under faults, with the proof kept in the suite.

Each scenario starts its own PostgreSQL, Redis, simulator and worker processes
(``harness``), does something an operator dreads to them, and ends with the same check
read from the tables (``checks.assert_sound``): every job terminal, one result per done
job, none empty, attempts within the limit, no worker dead or printing a traceback
unless the scenario killed it.

- ``test_postgres_restart``: PostgreSQL stopped (fast shutdown) or crashed mid-batch.
- ``test_redis_restart``: Redis killed and restarted empty under three workers.
- ``test_provider_outage``: every provider request fails for a while.
- ``test_worker_signals``: a worker frozen past its lease, stopped, killed in a loop.
- ``test_ambiguous_commit``: a claim, or a write of finished jobs, committed whose
  answer never reaches the worker.

- ``test_hostile_tenant``: an account's prompt template that stalls rendering (its rows
  fail once as ``invalid_input``; another account's jobs on the same workers are neither
  rescued nor paid twice), and a provider that echoes the API key in its errors (the key is
  nowhere in the workers' output, the rows, ``status`` or the results export).
"""

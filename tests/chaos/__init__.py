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

To be added once the features they prove land:

- a prompt template that stalls rendering (bounded rendering time and output size): the
  other accounts' jobs are not delayed, rescued or paid twice, and its rows fail once as
  ``invalid_input``;
- a provider that echoes the API key in its error messages (key redaction): the key
  appears nowhere in the workers' output, the rows or the exports.
"""

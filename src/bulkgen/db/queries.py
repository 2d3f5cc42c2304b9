"""Every SQL statement bulkgen runs, by name (noun then verb). Values are always parameters.

Nothing outside ``bulkgen.db`` knows a table name. Time always comes from the database
(``now()``), never from a worker's clock, so leases and backoffs agree across machines.
"""

# An existing account is only read, never written: an upsert's DO UPDATE would rewrite its
# row (a new row version, WAL, a lock) on every submit. NULL when another transaction
# created the name after this statement's snapshot was taken: ACCOUNT_ID_OF_NAME, run as
# a statement of its own, then sees it.
ACCOUNT_ENSURE = """
WITH found AS (SELECT id FROM accounts WHERE name = $1),
created AS (
    INSERT INTO accounts (name) SELECT $1 WHERE NOT EXISTS (SELECT FROM found)
    ON CONFLICT (name) DO NOTHING
    RETURNING id
)
SELECT id FROM found UNION ALL SELECT id FROM created
"""

ACCOUNT_ID_OF_NAME = "SELECT id FROM accounts WHERE name = $1"

# One statement for the whole batch: the batch row, its jobs (arrays unnested server-side,
# 10,000 rows in one round trip) and one NOTIFY for the whole enqueue, delivered at commit.
# An economy batch's jobs start `batched`: waiting for a provider batch, not for a worker.
BATCH_INSERT_WITH_JOBS = """
WITH batch AS (
    INSERT INTO batches (id, account_id, options, template, template_version, total,
                         budget_usd, mode, deadline_at, fallback_online)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $9, now() + make_interval(secs => $10), $11)
    RETURNING id, mode
),
queued AS (
    INSERT INTO jobs (batch_id, account_id, input, status)
    SELECT batch.id, $2, i, CASE WHEN batch.mode = 'economy' THEN 'batched' ELSE 'queued' END
    FROM batch, unnest($8::jsonb[]) AS i
)
SELECT pg_notify('bulkgen_jobs', id::text) FROM batch
"""

JOBS_NOTIFY = "SELECT pg_notify('bulkgen_jobs', $1)"

_BATCH_COLUMNS = """
b.id, b.account_id, a.name AS account, b.options, b.template, b.template_version,
b.total, b.budget_usd, b.created_at, b.cancelled_at, b.cancel_reason,
b.mode, b.deadline_at, b.fallback_online
"""

BATCH_GET = f"""
SELECT {_BATCH_COLUMNS}
FROM batches b JOIN accounts a ON a.id = b.account_id
WHERE b.id = $1
"""

# The batches of a claim's jobs, in one read (a claim over many accounts has many).
BATCHES_GET = f"""
SELECT {_BATCH_COLUMNS}
FROM batches b JOIN accounts a ON a.id = b.account_id
WHERE b.id = ANY($1::uuid[])
"""

BATCH_COUNTS = """
SELECT status, count(*) AS jobs,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(attempts), 0) AS attempts,
       count(*) FILTER (WHERE cached) AS cached,
       coalesce(sum(provider_calls), 0) AS provider_calls,
       coalesce(sum(provider_429s), 0) AS provider_429s
FROM jobs WHERE batch_id = $1
GROUP BY status
"""

# Done jobs without a non-empty result. The schema refuses such a row (CHECK on results,
# deferred trigger on jobs), so this is always 0; the demo prints it as evidence.
BATCH_EMPTY_DONE = """
SELECT count(*) FROM jobs j LEFT JOIN results r ON r.job_id = j.id
WHERE j.batch_id = $1 AND j.status = 'done' AND (r.content IS NULL OR btrim(r.content) = '')
"""

BATCH_ERRORS = """
SELECT error_kind, count(*) AS jobs, min(error_message) AS example
FROM jobs WHERE batch_id = $1 AND status IN ('failed', 'cancelled') AND error_kind IS NOT NULL
GROUP BY error_kind ORDER BY count(*) DESC
"""

# Jobs waiting (queued, or batched and not yet in a provider batch) are cancelled at once;
# the batch's provider batches are asked to stop (a worker cancels them at the provider),
# and the jobs they hold end when their answers are written: what finished is kept.
BATCH_CANCEL = """
WITH b AS (
    UPDATE batches SET cancelled_at = coalesce(cancelled_at, now()), cancel_reason = $2
    WHERE id = $1 RETURNING id
),
stopping AS (
    UPDATE provider_batches SET cancel_requested = true, poll_after = now()
    WHERE batch_id = (SELECT id FROM b) AND state <> 'processed' AND NOT cancel_requested
)
UPDATE jobs SET status = 'cancelled', error_kind = $2, finished_at = now()
WHERE batch_id = (SELECT id FROM b)
  AND (status = 'queued' OR (status = 'batched' AND lease_owner IS NULL))
"""

# Fair claim, round-robin over accounts from a cursor (``claim_cursor``, the last account a
# claim served), so its cost follows the claim's size, not the number of waiting accounts.
# ``visit`` walks the claim index from the cursor (a skip scan: one index descent per
# account, wrapping around after the last) until it has found twice the claim's size in
# usable accounts (a job due now, below their concurrency quota), or has come back to its
# first account. Of those, the ones with the fewest jobs running per unit of weight
# (``accounts.claim_weight``, 1 by default) are picked (at most $2, cursor order breaking
# ties), each offering a share of the claim in proportion to its weight, within its free
# quota, FIFO within the account (run_after, id), locked with FOR UPDATE SKIP LOCKED so
# concurrent claimers take different rows. Offers are interleaved round-robin (rank within
# the account over its weight, then fewest running per weight, then cursor order), and the
# cursor moves to the last account served (or past every account visited, when none could
# be). A claim may come back short (accounts with little queued, rows locked by another
# claimer); the worker then simply claims again. The cursor row is updated only when free
# (SKIP LOCKED): claims never wait for each other, and a concurrent one moves it instead.
# The quota is a soft cap: concurrent claims may overshoot it by what they take at the
# same moment.
JOBS_CLAIM = """
WITH RECURSIVE visit(n, account_id, first_id, running, weight, free, usable, found) AS (
    SELECT 0, (SELECT account_id FROM claim_cursor), NULL::bigint, 0, 1, 0, false, 0
    UNION ALL
    SELECT v.n + 1, s.account_id, coalesce(v.first_id, s.account_id), u.running, u.weight,
           u.free, u.usable, v.found + u.usable::int
    FROM visit v
    CROSS JOIN LATERAL (  -- the next account after v's, or the first one (wrapping)
        SELECT * FROM (
            (SELECT j.account_id, j.run_after FROM jobs j
             WHERE j.status = 'queued' AND j.account_id > v.account_id
             ORDER BY j.account_id, j.run_after LIMIT 1)
            UNION ALL
            (SELECT j.account_id, j.run_after FROM jobs j WHERE j.status = 'queued'
             ORDER BY j.account_id, j.run_after LIMIT 1)
        ) after_or_first LIMIT 1
    ) s
    CROSS JOIN LATERAL (  -- its earliest run_after came with it: due now, and a free slot?
        SELECT r.running, r.weight, r.free, r.free > 0 AND s.run_after <= now() AS usable
        FROM (SELECT x.running, coalesce(a.claim_weight, 1) AS weight,
                     coalesce(a.concurrency_quota, 0) - x.running AS free
              FROM (SELECT count(*)::int AS running FROM jobs g
                    WHERE g.account_id = s.account_id AND g.status = 'generating') x
              LEFT JOIN accounts a ON a.id = s.account_id
              OFFSET 0) r
    ) u
    WHERE v.found < 2 * $2 AND (v.first_id IS NULL OR s.account_id <> v.first_id)
),
picked AS (
    SELECT n, account_id, running::float8 / weight AS load, weight, free FROM visit
    WHERE n > 0 AND usable ORDER BY running::float8 / weight, n LIMIT $2
),
offer AS (
    SELECT n, account_id, load, weight,
           least(ceil($2::numeric * weight / (SELECT sum(weight) FROM picked))::int, free)
               AS slots
    FROM picked
),
locked AS (
    SELECT c.id, o.account_id, o.load, o.weight, o.n,
           row_number() OVER (PARTITION BY o.account_id ORDER BY c.run_after, c.id) AS rank
    FROM offer o
    CROSS JOIN LATERAL (
        SELECT j.id, j.run_after FROM jobs j
        WHERE j.status = 'queued' AND j.account_id = o.account_id AND j.run_after <= now()
        ORDER BY j.run_after, j.id
        LIMIT o.slots
        FOR UPDATE SKIP LOCKED
    ) c
),
chosen AS (
    SELECT id, account_id, n FROM locked ORDER BY rank::float8 / weight, load, n LIMIT $2
),
moved AS (
    UPDATE claim_cursor SET account_id = t.account_id
    FROM (SELECT coalesce((SELECT account_id FROM chosen ORDER BY n DESC LIMIT 1),
                          (SELECT account_id FROM visit ORDER BY n DESC LIMIT 1)) AS account_id
         ) t
    WHERE only_row = (SELECT only_row FROM claim_cursor FOR UPDATE SKIP LOCKED)
      AND claim_cursor.account_id IS DISTINCT FROM t.account_id AND t.account_id IS NOT NULL
    RETURNING 1
)
UPDATE jobs j
SET status = 'generating', lease_owner = $1, claims = j.claims + 1
FROM chosen WHERE j.id = chosen.id
RETURNING j.id, j.batch_id, j.account_id, j.input, j.attempts, j.rate_limited_ms,
          j.max_tokens_grown, j.claims
"""

# $2 false: jobs of economy batches not counted (a worker that cannot send them).
JOBS_PENDING_COUNT = """
SELECT count(*) FROM jobs
WHERE (status IN ('queued', 'generating') OR (status = 'batched' AND $2::bool))
  AND ($1::uuid IS NULL OR batch_id = $1)
"""

# Scrape-time gauge: each count is answered from its partial index (jobs_claim_idx holds
# exactly the queued jobs, jobs_running_idx the generating ones), so its cost follows the
# backlog, never the history of done jobs.
JOBS_ACTIVE_COUNTS = """
SELECT (SELECT count(*) FROM jobs WHERE status = 'queued') AS queued,
       (SELECT count(*) FROM jobs WHERE status = 'generating') AS generating,
       (SELECT count(*) FROM jobs WHERE status = 'batched') AS batched
"""

WORKER_REGISTER = """
INSERT INTO workers (id, host, pid) VALUES ($1, $2, $3)
ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
"""

# One row write per worker per heartbeat, whatever the number of jobs it holds.
WORKER_HEARTBEAT = "UPDATE workers SET heartbeat_at = now() WHERE id = $1 RETURNING id"

WORKER_DELETE = "DELETE FROM workers WHERE id = $1"

# What the database says this worker runs; the worker compares it with what it really runs.
JOBS_OF_OWNER = "SELECT id FROM jobs WHERE lease_owner = $1 AND status = 'generating'"

# Jobs of workers whose heartbeat went stale (or that vanished) go back to the queue. The
# interrupted attempt counts, so a job that kills every worker that takes it ends failed.
# run_after is left alone: a rescued job keeps its place in its account's line.
JOBS_RESCUE = """
WITH stale AS (
    DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1) RETURNING id
)
UPDATE jobs j
SET status = CASE WHEN j.attempts + 1 >= $2 THEN 'failed'
                  WHEN b.cancelled_at IS NOT NULL THEN 'cancelled' ELSE 'queued' END,
    attempts = j.attempts + 1,
    lease_owner = NULL,
    error_kind = CASE WHEN j.attempts + 1 < $2 AND b.cancelled_at IS NOT NULL
                      THEN b.cancel_reason ELSE 'lease_expired' END,
    error_message = 'the worker running this job stopped sending heartbeats',
    finished_at = CASE WHEN j.attempts + 1 >= $2 OR b.cancelled_at IS NOT NULL THEN now() END
FROM batches b
WHERE b.id = j.batch_id AND j.status = 'generating'
  AND (j.lease_owner IN (SELECT id FROM stale)
       OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = j.lease_owner))
RETURNING j.id
"""

# Shutdown, or jobs a worker owns but does not run (a claim whose answer was lost): they go
# back untouched (no attempt burnt, same place in line), unless their batch was cancelled.
JOBS_RELEASE = """
UPDATE jobs j
SET status = CASE WHEN b.cancelled_at IS NULL THEN 'queued' ELSE 'cancelled' END,
    error_kind = CASE WHEN b.cancelled_at IS NULL THEN j.error_kind ELSE b.cancel_reason END,
    finished_at = CASE WHEN b.cancelled_at IS NULL THEN NULL ELSE now() END,
    lease_owner = NULL
FROM batches b
WHERE b.id = j.batch_id AND j.lease_owner = $1 AND j.status = 'generating'
  AND j.id = ANY($2::bigint[])
RETURNING j.id
"""

# Finishing, fenced on the lease owner: a job taken over by another worker is never
# finished twice. Result and status in one statement; the deferred trigger checks both.
JOBS_FINISH_DONE = """
WITH d AS (
    SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[],
                         $7::text[], $8::text[], $9::bool[], $10::int[], $11::int[],
                         $12::text[], $13::int[], $14::int[], $15::int[], $16::int[],
                         $17::bool[])
        AS t(job_id, content, html, title, word_count, finish_reason, model, cached,
             prompt_tokens, completion_tokens, cache_key, claim, cache_read_tokens,
             calls, calls_429, batch_api)
),
fin AS (
    UPDATE jobs j
    SET status = 'done', attempts = j.attempts + CASE WHEN d.cached THEN 0 ELSE 1 END,
        lease_owner = NULL, finished_at = now(),
        prompt_tokens = d.prompt_tokens, completion_tokens = d.completion_tokens,
        cache_read_tokens = d.cache_read_tokens,
        provider_calls = j.provider_calls + d.calls,
        provider_429s = j.provider_429s + d.calls_429,
        cached = d.cached, cache_key = d.cache_key, error_kind = NULL, error_message = NULL,
        batch_api = d.batch_api
    FROM d
    WHERE j.id = d.job_id AND j.lease_owner = $1 AND j.status IN ('generating', 'batched')
      AND (d.claim IS NULL OR j.claims = d.claim)
    RETURNING j.id
)
INSERT INTO results (job_id, content, html, title, word_count, finish_reason, model)
SELECT d.job_id, d.content, d.html, d.title, d.word_count, d.finish_reason, d.model
FROM d JOIN fin ON fin.id = d.job_id
RETURNING job_id
"""

# A retry of a job whose batch was cancelled meanwhile ends `cancelled`: a cancel sticks.
# A job a provider batch held waits for the next one, unless its batch went online (its
# deadline passed): then it is queued for a worker like any other.
JOBS_FINISH_RETRY = """
UPDATE jobs j
SET status = CASE WHEN b.cancelled_at IS NOT NULL THEN 'cancelled'
                  WHEN j.status = 'batched' AND b.mode = 'economy' THEN 'batched'
                  ELSE 'queued' END,
    finished_at = CASE WHEN b.cancelled_at IS NULL THEN NULL ELSE now() END,
    lease_owner = NULL,
    run_after = now() + make_interval(secs => d.delay_s),
    attempts = j.attempts + d.burnt, rate_limited_ms = j.rate_limited_ms + d.rate_limited_ms,
    max_tokens_grown = j.max_tokens_grown OR d.grow,
    provider_calls = j.provider_calls + d.calls, provider_429s = j.provider_429s + d.calls_429,
    error_kind = CASE WHEN b.cancelled_at IS NULL THEN d.error_kind ELSE b.cancel_reason END,
    error_message = d.error_message
FROM unnest($2::bigint[], $3::float8[], $4::int[], $5::int[], $6::bool[], $7::text[], $8::text[],
            $9::int[], $10::int[], $11::int[])
    AS d(job_id, delay_s, burnt, rate_limited_ms, grow, error_kind, error_message, claim,
         calls, calls_429),
    batches b
WHERE j.id = d.job_id AND b.id = j.batch_id
  AND j.lease_owner = $1 AND j.status IN ('generating', 'batched')
  AND (d.claim IS NULL OR j.claims = d.claim)
RETURNING j.id
"""

JOBS_FINISH_FAILED = """
UPDATE jobs j
SET status = d.status, lease_owner = NULL, finished_at = now(),
    attempts = j.attempts + d.burnt, error_kind = d.error_kind, error_message = d.error_message,
    prompt_tokens = coalesce(d.prompt_tokens, j.prompt_tokens),
    completion_tokens = coalesce(d.completion_tokens, j.completion_tokens),
    cache_read_tokens = coalesce(d.cache_read_tokens, j.cache_read_tokens),
    provider_calls = j.provider_calls + d.calls, provider_429s = j.provider_429s + d.calls_429,
    batch_api = d.batch_api
FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[], $7::int[], $8::int[],
            $9::int[], $10::int[], $11::int[], $12::int[], $13::bool[])
    AS d(job_id, status, burnt, error_kind, error_message, prompt_tokens, completion_tokens,
         claim, cache_read_tokens, calls, calls_429, batch_api)
WHERE j.id = d.job_id AND j.lease_owner = $1 AND j.status IN ('generating', 'batched')
  AND (d.claim IS NULL OR j.claims = d.claim)
RETURNING j.id
"""

RESULTS_OF_BATCH = """
SELECT j.id, j.input, j.status, j.attempts, j.error_kind, j.error_message, j.cached,
       j.prompt_tokens, j.completion_tokens,
       r.content, r.html, r.title, r.word_count, r.finish_reason, r.model
FROM jobs j LEFT JOIN results r ON r.job_id = j.id
WHERE j.batch_id = $1 AND j.id > $2
ORDER BY j.id
LIMIT $3
"""

CONNECTIONS_OF_APP = """
SELECT count(*) FROM pg_stat_activity
WHERE application_name = $1 AND datname = current_database()
"""

# Cost accounting: the jobs that carry tokens (done, or failed after a billed answer),
# grouped by what prices them. A job without a result is priced at the model it asked for.
BATCH_USAGE = """
SELECT j.status, j.cached,
       coalesce(r.model, j.input->'overrides'->>'model', b.options->>'model', '') AS model,
       CASE WHEN j.batch_api THEN 'batch' ELSE 'online' END AS tier,
       count(*) AS jobs,
       coalesce(sum(j.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(j.completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(j.cache_read_tokens), 0)::bigint AS cache_read_tokens
FROM jobs j
JOIN batches b ON b.id = j.batch_id
LEFT JOIN results r ON r.job_id = j.id
WHERE j.batch_id = $1
  AND (j.status = 'done' OR (j.status = 'failed' AND j.prompt_tokens IS NOT NULL))
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
"""

BATCH_BUDGET_GET = "SELECT budget_usd FROM batches WHERE id = $1"

# Retention: finished batches older than the cutoff go, with their jobs and results (the
# results cascade from jobs), a bounded number per statement so pruning never holds long
# locks. The foreign keys are checked at the end of the statement, after both deletes.
BATCHES_PRUNE = """
WITH old AS (
    SELECT b.id FROM batches b
    WHERE b.created_at < now() - make_interval(days => $1)
      AND NOT EXISTS (
          SELECT 1 FROM jobs j
          WHERE j.batch_id = b.id AND j.status IN ('queued', 'generating', 'batched'))
    ORDER BY b.created_at
    LIMIT $2
),
gone AS (
    DELETE FROM jobs j USING old WHERE j.batch_id = old.id RETURNING j.id
)
DELETE FROM batches b USING old
WHERE b.id = old.id
RETURNING b.id, (SELECT count(*) FROM gone) AS jobs
"""

# ---------------------------------------------------------------- accounts and API keys
# Keys are stored as their SHA-256 digest only (see bulkgen.accounts); the digest is what
# is looked up, so no statement ever sees a key.

# A new account; nothing is returned when the name is taken (the caller says so clearly).
ACCOUNT_CREATE = """
INSERT INTO accounts (name, api_key_hash, concurrency_quota) VALUES ($1, $2, $3)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, concurrency_quota, created_at
"""

ACCOUNT_BY_KEY_HASH = "SELECT id, name, api_key_hash FROM accounts WHERE api_key_hash = $1"

# Rotate ($2 a new digest) or revoke ($2 NULL): the old key stops working with this commit.
ACCOUNT_KEY_SET = "UPDATE accounts SET api_key_hash = $2 WHERE name = $1 RETURNING id"

ACCOUNT_QUOTA_SET = "UPDATE accounts SET concurrency_quota = $2 WHERE name = $1 RETURNING id"

ACCOUNT_WEIGHT_SET = "UPDATE accounts SET claim_weight = $2 WHERE name = $1 RETURNING id"

ACCOUNTS_LIST = """
SELECT a.id, a.name, a.concurrency_quota, a.claim_weight, a.created_at,
       a.api_key_hash IS NOT NULL AS has_key,
       (SELECT count(*) FROM batches b WHERE b.account_id = a.id) AS batches
FROM accounts a
ORDER BY a.name
"""

# First start of a server: give `$1` a key only while no account has one. The conflict
# clause re-checks the row it locked, so two servers starting at once hand out one key.
ACCOUNT_KEY_BOOTSTRAP = """
INSERT INTO accounts (name, api_key_hash)
SELECT $1, $2 WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE api_key_hash IS NOT NULL)
ON CONFLICT (name) DO UPDATE SET api_key_hash = EXCLUDED.api_key_hash
WHERE accounts.api_key_hash IS NULL
RETURNING id
"""

# ---------------------------------------------------------------- one account's batches
# Every statement below carries the account id: another account's batch or job is
# indistinguishable from a missing one.

BATCH_GET_OF_ACCOUNT = """
SELECT b.id, b.account_id, a.name AS account, b.options, b.template, b.template_version,
       b.total, b.budget_usd, b.created_at, b.cancelled_at, b.cancel_reason,
       b.mode, b.deadline_at, b.fallback_online
FROM batches b JOIN accounts a ON a.id = b.account_id
WHERE b.id = $1 AND b.account_id = $2
"""

# Newest first, keyset-paginated on (created_at, id): a page costs the same at any depth.
BATCHES_OF_ACCOUNT = """
SELECT b.id, b.account_id, a.name AS account, b.options, b.template, b.template_version,
       b.total, b.budget_usd, b.created_at, b.cancelled_at, b.cancel_reason,
       b.mode, b.deadline_at, b.fallback_online
FROM batches b JOIN accounts a ON a.id = b.account_id
WHERE b.account_id = $1
  AND ($2::timestamptz IS NULL OR (b.created_at, b.id) < ($2::timestamptz, $3::uuid))
ORDER BY b.created_at DESC, b.id DESC
LIMIT $4
"""

BATCHES_STATUS_COUNTS = """
SELECT batch_id, status, count(*) AS jobs
FROM jobs WHERE batch_id = ANY($1::uuid[])
GROUP BY batch_id, status
"""

JOBS_OF_BATCH = """
SELECT j.id, j.batch_id, j.status, j.input, j.attempts, j.error_kind, j.error_message,
       j.cached, j.prompt_tokens, j.completion_tokens, j.created_at, j.finished_at
FROM jobs j
WHERE j.batch_id = $1 AND j.account_id = $2
  AND ($3::text IS NULL OR j.status = $3) AND j.id > $4
ORDER BY j.id
LIMIT $5
"""

JOB_GET_OF_ACCOUNT = """
SELECT j.id, j.batch_id, j.status, j.input, j.attempts, j.error_kind, j.error_message,
       j.cached, j.prompt_tokens, j.completion_tokens, j.created_at, j.finished_at,
       r.content, r.html, r.title, r.word_count, r.finish_reason, r.model
FROM jobs j LEFT JOIN results r ON r.job_id = j.id
WHERE j.id = $1 AND j.account_id = $2
"""

# Failed jobs go back to the queue with fresh attempts (and a fresh rate-limit wait
# allowance); their last error stays readable until they finish again. A cancelled batch
# keeps its failed jobs: a cancel sticks. Tokens of the failed answer stay on the row until
# a new answer replaces them, as for any retry.
BATCH_RETRY_FAILED = """
WITH b AS (
    SELECT id, cancelled_at, mode FROM batches WHERE id = $1 AND account_id = $2
),
requeued AS (
    UPDATE jobs j
    SET status = CASE WHEN b.mode = 'economy' THEN 'batched' ELSE 'queued' END,
        attempts = 0, rate_limited_ms = 0, run_after = now(), finished_at = NULL
    FROM b
    WHERE j.batch_id = b.id AND b.cancelled_at IS NULL AND j.status = 'failed'
    RETURNING j.id
)
SELECT (SELECT count(*) FROM b) > 0 AS found,
       coalesce((SELECT cancelled_at IS NOT NULL FROM b), false) AS cancelled,
       (SELECT count(*) FROM requeued) AS requeued
"""

# ---------------------------------------------------------------- idempotent submits

# Claimed inside the batch's own transaction, before its rows are written.
IDEMPOTENCY_KEY_CLAIM = """
INSERT INTO idempotency_keys (account_id, key, request_hash, batch_id)
VALUES ($1, $2, $3, $4)
ON CONFLICT (account_id, key) DO NOTHING
RETURNING batch_id
"""

IDEMPOTENCY_KEY_GET = """
SELECT batch_id, request_hash FROM idempotency_keys WHERE account_id = $1 AND key = $2
"""

DATABASE_PING = "SELECT 1"

# ---------------------------------------------------------------- economy mode
# Provider batches (see bulkgen.economy): a row per provider batch, written before anything
# is sent; its id is the lease_owner of the `batched` jobs it holds.

# A provider batch for the oldest waiting jobs of one (batch, model) of a batch still in
# economy mode and not cancelled, in one statement: the row ($1, leased to worker $2 for
# $4 s) and up to $3 of those jobs, locked SKIP LOCKED so concurrent dispatchers take
# different jobs. Nothing is written when no job is free.
ECONOMY_DISPATCH = """
WITH first AS (
    SELECT j.batch_id, coalesce(j.input->'overrides'->>'model', b.options->>'model') AS model
    FROM jobs j JOIN batches b ON b.id = j.batch_id
    WHERE j.status = 'batched' AND j.lease_owner IS NULL AND j.run_after <= now()
      AND b.mode = 'economy' AND b.cancelled_at IS NULL
    ORDER BY j.run_after, j.id
    LIMIT 1
),
picked AS (
    SELECT j.id FROM jobs j, first, batches b
    WHERE j.status = 'batched' AND j.lease_owner IS NULL AND j.batch_id = first.batch_id
      AND j.run_after <= now() AND b.id = first.batch_id
      AND coalesce(j.input->'overrides'->>'model', b.options->>'model') = first.model
    ORDER BY j.run_after, j.id
    LIMIT $3
    FOR UPDATE OF j SKIP LOCKED
),
pb AS (
    INSERT INTO provider_batches (id, batch_id, model, requests, lease_owner, lease_until)
    SELECT $1, first.batch_id, first.model, (SELECT count(*) FROM picked), $2,
           now() + make_interval(secs => $4)
    FROM first WHERE EXISTS (SELECT FROM picked)
    RETURNING id
)
UPDATE jobs j SET lease_owner = pb.id, claims = j.claims + 1
FROM picked, pb
WHERE j.id = picked.id
RETURNING j.id, j.batch_id, j.account_id, j.input, j.attempts, j.rate_limited_ms,
          j.max_tokens_grown, j.claims
"""

# `stopping`, read live at every step: the provider batch must not send (or must be
# cancelled at the provider) because its batch was cancelled or went online at its deadline.
_PROVIDER_BATCH_COLUMNS = """
p.id, p.batch_id, p.model, p.state, p.provider_id, p.provider_status, p.input_file_id,
p.output_file_id, p.error_file_id, p.requests, p.completed, p.failed, p.reserved_usd,
p.created_at, p.expires_at, p.poll_interval_s, p.failures,
(p.cancel_requested OR b.cancelled_at IS NOT NULL OR b.mode <> 'economy') AS stopping
"""

# The provider batch most overdue for a step (send, poll, cancel, or write its answers),
# leased to worker $1 for $2 s. A lease that lapsed (its worker died) is taken over.
PROVIDER_BATCH_LEASE = f"""
WITH due AS (
    SELECT id FROM provider_batches
    WHERE state <> 'processed' AND poll_after <= now()
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY poll_after
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
leased AS (
    UPDATE provider_batches p
    SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)
    FROM due WHERE p.id = due.id
    RETURNING p.*
)
SELECT {_PROVIDER_BATCH_COLUMNS} FROM leased p JOIN batches b ON b.id = p.batch_id
"""

# Every step below is fenced on the lease: a worker whose lease lapsed writes nothing.
# Extending it also says whether the provider batch must stop (see _PROVIDER_BATCH_COLUMNS).
PROVIDER_BATCH_LEASE_EXTEND = """
UPDATE provider_batches p SET lease_until = now() + make_interval(secs => $3)
FROM batches b
WHERE p.id = $1 AND p.lease_owner = $2 AND b.id = p.batch_id
RETURNING (p.cancel_requested OR b.cancelled_at IS NOT NULL OR b.mode <> 'economy') AS stopping
"""

PROVIDER_BATCH_PROVIDER_ID = "SELECT provider_id FROM provider_batches WHERE id = $1"

PROVIDER_BATCH_SUBMITTED = """
UPDATE provider_batches
SET state = 'submitted', provider_id = $3, input_file_id = $4, provider_status = $5,
    requests = $6, expires_at = to_timestamp($7),
    submitted_at = coalesce(submitted_at, now()), failures = 0,
    poll_after = CASE WHEN cancel_requested THEN now()
                      ELSE now() + make_interval(secs => $8) END,
    poll_interval_s = $8, lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2
RETURNING id
"""

PROVIDER_BATCH_POLLED = """
UPDATE provider_batches
SET provider_status = $3, completed = $4, failed = $5, output_file_id = $6, error_file_id = $7,
    poll_after = now() + make_interval(secs => $8), poll_interval_s = $8, failures = 0,
    lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2
RETURNING id
"""

PROVIDER_BATCH_PROCESSED = """
UPDATE provider_batches
SET state = 'processed', processed_at = now(), reserved_usd = 0, unrecorded_usd = $9,
    provider_status = $3, completed = $4, failed = $5, output_file_id = $6,
    error_file_id = $7, error = $8, lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2
RETURNING id
"""

# A provider batch that had nothing left to send (every job answered from the cache, failed,
# or given back): it never existed at the provider, so it leaves no row behind.
PROVIDER_BATCH_DROP = """
DELETE FROM provider_batches p
WHERE p.id = $1 AND p.lease_owner = $2 AND p.provider_id IS NULL
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lease_owner = p.id AND j.status = 'batched')
RETURNING p.id
"""

# A step that failed (the provider unreachable, an upload refused): tried again after $3 s.
PROVIDER_BATCH_POSTPONED = """
UPDATE provider_batches
SET poll_after = now() + make_interval(secs => $3), error = $4, failures = failures + 1,
    lease_owner = NULL, lease_until = NULL
WHERE id = $1 AND lease_owner = $2
RETURNING failures
"""

PROVIDER_BATCH_JOBS = """
SELECT id, batch_id, account_id, input, attempts, rate_limited_ms, max_tokens_grown, claims
FROM jobs WHERE lease_owner = $1 AND status = 'batched'
ORDER BY id
"""

# Jobs a provider batch gives back unsent (past its file's cut, waiting for money, or its
# batch stopped), while worker $4 holds its lease: no attempt burnt, due again after $3 s.
# Like a retry, they go where their batch now sends jobs: waiting for the next provider
# batch, queued for a worker (the batch went online), or cancelled.
PROVIDER_BATCH_JOBS_RETURN = """
UPDATE jobs j
SET status = CASE WHEN b.cancelled_at IS NOT NULL THEN 'cancelled'
                  WHEN b.mode = 'economy' THEN 'batched' ELSE 'queued' END,
    error_kind = CASE WHEN b.cancelled_at IS NOT NULL THEN b.cancel_reason ELSE j.error_kind END,
    finished_at = CASE WHEN b.cancelled_at IS NOT NULL THEN now() END,
    lease_owner = NULL, run_after = now() + make_interval(secs => $3)
FROM batches b, provider_batches p
WHERE j.lease_owner = $1 AND j.status = 'batched' AND j.id = ANY($2::bigint[])
  AND b.id = j.batch_id AND p.id = $1 AND p.lease_owner = $4
RETURNING j.id
"""

# A new provider batch's hold on its batch's cap, in one transaction: the batch row is
# locked first (concurrent reservations for one batch take turns), then, in a statement of
# its own so that its snapshot sees the reservation committed by the previous holder of
# the lock, the cap and what every other provider batch of the batch holds: the worst case
# of those not processed yet, and the billed cost of rejected answers no job row keeps.
PROVIDER_BATCH_BUDGET_LOCK = "SELECT 1 FROM batches WHERE id = $1 FOR UPDATE"

PROVIDER_BATCH_BUDGET = """
SELECT b.budget_usd AS cap,
       coalesce((SELECT sum(CASE WHEN p.state = 'processed' THEN p.unrecorded_usd
                                 ELSE p.reserved_usd + p.unrecorded_usd END)
                 FROM provider_batches p
                 WHERE p.batch_id = b.id AND p.id <> $2), 0) AS held
FROM batches b WHERE b.id = $1
"""

PROVIDER_BATCH_RESERVE = """
UPDATE provider_batches SET reserved_usd = $3 WHERE id = $1 AND lease_owner = $2 RETURNING id
"""

# Economy batches whose deadline passed and that asked to fall back: they become online
# batches (once), their waiting jobs are queued for workers, and their provider batches
# are asked to stop; the jobs those hold are queued when their answers are written.
ECONOMY_FALLBACK = """
WITH due AS (
    UPDATE batches SET mode = 'online'
    WHERE mode = 'economy' AND fallback_online AND deadline_at <= now()
    RETURNING id
),
stopping AS (
    UPDATE provider_batches p SET cancel_requested = true, poll_after = now()
    FROM due WHERE p.batch_id = due.id AND p.state <> 'processed' AND NOT p.cancel_requested
),
queued AS (
    UPDATE jobs j SET status = 'queued'
    FROM due
    WHERE j.batch_id = due.id AND j.status = 'batched' AND j.lease_owner IS NULL
    RETURNING j.id
)
SELECT count(*) AS jobs, pg_notify('bulkgen_jobs', 'fallback') FROM queued HAVING count(*) > 0
"""

# Provider batches not processed yet: a burst worker does not exit while one is open.
PROVIDER_BATCHES_OPEN = "SELECT count(*) FROM provider_batches WHERE state <> 'processed'"

PROVIDER_BATCHES_OF_BATCH = f"""
SELECT {_PROVIDER_BATCH_COLUMNS}
FROM provider_batches p JOIN batches b ON b.id = p.batch_id
WHERE p.batch_id = $1 ORDER BY p.created_at
"""

# What the provider batches of a batch hold against its cap, for the online budget ledger's
# seed (a batch that fell back online while some were still running).
PROVIDER_BATCHES_HELD = """
SELECT coalesce(sum(CASE WHEN state = 'processed' THEN unrecorded_usd
                         ELSE reserved_usd + unrecorded_usd END), 0)
FROM provider_batches WHERE batch_id = $1
"""

-- Economy mode: a batch's jobs go through the provider's Batch API (half the price, answered
-- within a day) instead of one call each.
--
-- A job of an economy batch is `batched` from its insert: waiting for a provider batch
-- while its `lease_owner` is NULL, held by one while `lease_owner` is that provider batch's
-- id. `generating` stays what a worker holds, so the rescue of dead workers' jobs, the
-- per-account quota and the running-jobs index never see a job a provider batch holds.
ALTER TABLE jobs
    DROP CONSTRAINT jobs_status_known,
    DROP CONSTRAINT jobs_leased_iff_generating,
    ADD CONSTRAINT jobs_status_known
        CHECK (status IN ('queued', 'generating', 'batched', 'done', 'failed', 'cancelled')),
    ADD CONSTRAINT jobs_leased_iff_generating
        CHECK (status = 'batched' OR (status = 'generating') = (lease_owner IS NOT NULL)),
    -- Answered through a Batch API: priced at its batch prices. Catalog-only default.
    ADD COLUMN batch_api boolean NOT NULL DEFAULT false;

-- A provider batch's own jobs (lease_owner), and a batch's waiting ones (lease_owner NULL).
CREATE INDEX jobs_batched_idx ON jobs (lease_owner, batch_id, run_after, id)
    WHERE status = 'batched';
-- The oldest waiting job of any batch, without reading every waiting job: dispatch.
CREATE INDEX jobs_batched_waiting_idx ON jobs (run_after, id)
    WHERE status = 'batched' AND lease_owner IS NULL;

-- mode: how new and retried jobs are sent. deadline_at (economy batches that asked to fall
-- back only): when what is still missing goes online; the batch's mode then becomes
-- `online`, so it falls back once.
ALTER TABLE batches
    ADD COLUMN mode text NOT NULL DEFAULT 'online' CHECK (mode IN ('online', 'economy')),
    ADD COLUMN deadline_at timestamptz,
    ADD COLUMN fallback_online boolean NOT NULL DEFAULT false;
CREATE INDEX batches_fallback_idx ON batches (deadline_at)
    WHERE mode = 'economy' AND fallback_online;

-- One row per provider batch, written before anything is sent: its id is the `lease_owner`
-- of the jobs it holds and the metadata the provider batch is created with, so a worker
-- that died between creating it and recording its provider id finds it again instead of
-- creating a second one. Workers take turns on a row under a lease (lease_owner,
-- lease_until); poll_after paces the polls.
CREATE TABLE provider_batches (
    id               uuid PRIMARY KEY,
    batch_id         uuid NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    model            text NOT NULL,
    state            text NOT NULL DEFAULT 'preparing'
                     CHECK (state IN ('preparing', 'submitted', 'processed')),
    provider_id      text,  -- unique at one provider; two simulators may reuse ids
    provider_status  text,
    input_file_id    text,
    output_file_id   text,
    error_file_id    text,
    requests         integer NOT NULL DEFAULT 0 CHECK (requests >= 0),
    completed        integer NOT NULL DEFAULT 0,
    failed           integer NOT NULL DEFAULT 0,
    -- The worst case of its requests, held against the batch's spending cap until its
    -- answers are written (their cost is then in the jobs' rows) ...
    reserved_usd     numeric(14, 6) NOT NULL DEFAULT 0 CHECK (reserved_usd >= 0),
    -- ... except the answers that were billed and then rejected and retried (empty, too
    -- short): no job row keeps their cost, so it stays held here for good.
    unrecorded_usd   numeric(14, 6) NOT NULL DEFAULT 0 CHECK (unrecorded_usd >= 0),
    -- Steps that failed in a row (provider or database errors); past a bound the provider
    -- batch is given up and its jobs go through the retry rules.
    failures         integer NOT NULL DEFAULT 0,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    submitted_at     timestamptz,
    expires_at       timestamptz,
    processed_at     timestamptz,
    poll_after       timestamptz NOT NULL DEFAULT now(),
    poll_interval_s  real NOT NULL DEFAULT 0,
    lease_owner      uuid,
    lease_until      timestamptz,
    error            text
);
CREATE INDEX provider_batches_due_idx ON provider_batches (poll_after)
    WHERE state <> 'processed';
CREATE INDEX provider_batches_batch_idx ON provider_batches (batch_id);

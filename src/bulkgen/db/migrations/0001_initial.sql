-- bulkgen schema, version 1.
-- jobs is the hot table: kept narrow (content lives in results), fillfactor 80 so the
-- claim/finish updates stay HOT, and a partial index that matches the claim query exactly.

CREATE TABLE accounts (
    id                bigserial PRIMARY KEY,
    name              text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    api_key_hash      text UNIQUE,
    concurrency_quota integer NOT NULL DEFAULT 100 CHECK (concurrency_quota > 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE batches (
    id               uuid PRIMARY KEY,
    account_id       bigint NOT NULL REFERENCES accounts (id),
    options          jsonb NOT NULL,
    template         text NOT NULL,
    template_version text NOT NULL,
    total            integer NOT NULL CHECK (total >= 0),
    budget_usd       numeric(14, 6) CHECK (budget_usd IS NULL OR budget_usd >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    cancelled_at     timestamptz,
    cancel_reason    text
);
CREATE INDEX batches_account_idx ON batches (account_id, created_at DESC);

CREATE TABLE workers (
    id           uuid PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id                bigserial PRIMARY KEY,
    batch_id          uuid NOT NULL REFERENCES batches (id),
    account_id        bigint NOT NULL,
    status            text NOT NULL DEFAULT 'queued' CHECK (
        status IN ('queued', 'generating', 'formatting', 'done', 'failed', 'cancelled')),
    attempts          smallint NOT NULL DEFAULT 0,
    run_after         timestamptz NOT NULL DEFAULT now(),
    lease_owner       uuid,
    lease_expires_at  timestamptz,
    rate_limited_ms   integer NOT NULL DEFAULT 0,
    max_tokens_grown  boolean NOT NULL DEFAULT false,
    input             jsonb NOT NULL,
    cache_key         text,
    error_kind        text,
    error_message     text,
    prompt_tokens     integer,
    completion_tokens integer,
    cached            boolean NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    CHECK ((status IN ('generating', 'formatting')) = (lease_owner IS NOT NULL))
) WITH (fillfactor = 80);

-- The claim: queued jobs, per account, oldest run_after first.
CREATE INDEX jobs_claim_idx ON jobs (account_id, run_after, id) WHERE status = 'queued';
-- Per-account quota, rescue and shutdown: the (few) running jobs, by account and owner.
CREATE INDEX jobs_running_idx ON jobs (account_id, lease_owner)
    WHERE status IN ('generating', 'formatting');
CREATE INDEX jobs_batch_idx ON jobs (batch_id, status);

CREATE TABLE results (
    job_id        bigint PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    content       text NOT NULL CHECK (content ~ '[^[:space:]]'),
    html          text NOT NULL,
    title         text NOT NULL,
    word_count    integer NOT NULL CHECK (word_count > 0),
    finish_reason text NOT NULL,
    model         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The database itself refuses a `done` job without a non-empty result. Deferred to commit,
-- so the result and the status may be written in either order within one transaction.
CREATE FUNCTION bulkgen_done_needs_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'done' AND NOT EXISTS (
        SELECT 1 FROM results r WHERE r.job_id = NEW.id AND r.content ~ '[^[:space:]]'
    ) THEN
        RAISE EXCEPTION 'job % cannot be done without a non-empty result', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER jobs_done_needs_result
    AFTER INSERT OR UPDATE OF status ON jobs
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (NEW.status = 'done')
    EXECUTE FUNCTION bulkgen_done_needs_result();

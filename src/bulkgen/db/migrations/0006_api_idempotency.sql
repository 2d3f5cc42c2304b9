-- Idempotent submits over the API: a client that retries a POST with the same
-- Idempotency-Key gets the batch its first attempt created, never a second one. The key is
-- claimed in the same transaction that inserts the batch, before the batch row exists, so
-- the foreign key is checked at commit; a concurrent duplicate waits on the primary key and
-- then finds the first one's row. Keys go with their batch when it is pruned.
CREATE TABLE idempotency_keys (
    account_id   bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash text NOT NULL,
    batch_id     uuid NOT NULL
        REFERENCES batches (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_batch_idx ON idempotency_keys (batch_id);

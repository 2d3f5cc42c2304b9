-- How many requests a job sent to the provider, and how many of them were answered 429,
-- summed over its claims: a batch's 429 share comes from its own rows, like its cost.
-- A constant default is stored in the catalog (PostgreSQL 11+), so no row is rewritten.
ALTER TABLE jobs
    ADD COLUMN provider_calls integer NOT NULL DEFAULT 0,
    ADD COLUMN provider_429s integer NOT NULL DEFAULT 0;

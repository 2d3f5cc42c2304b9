-- The part of a job's prompt tokens the provider read from its prompt cache, billed at the
-- cheaper cached-input price: without it a batch sharing a long template is over-priced.
-- NULL (jobs finished before this column, providers that do not say) prices as none cached.
-- Nullable without a default, so adding it rewrites no rows.
ALTER TABLE jobs ADD COLUMN cache_read_tokens integer;

-- Results are compressed with lz4 instead of PostgreSQL's default, pglz.
--
-- An article's Markdown and HTML (~6 KB and ~7 KB for 800 words) are over the TOAST
-- threshold, so every finished job compresses both. pglz made that the largest part of
-- the database's CPU per finished job: inserting a result cost its backend 0.35 ms of CPU
-- with pglz, 0.09 ms with lz4, for 12% more bytes (5.7 KB against 6.4 KB a row;
-- bench/compression.py, in BENCHMARKS.md). Only new values are compressed with lz4: rows
-- already stored keep pglz and read as before, and the change itself is catalog-only.
--
-- A server built without lz4 (the embedded PostgreSQL is one; distribution packages have
-- it) keeps pglz: results work the same, at the old cost.
DO $$
BEGIN
    ALTER TABLE results ALTER COLUMN content SET COMPRESSION lz4,
                        ALTER COLUMN html SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server: results stay compressed with pglz';
END $$;

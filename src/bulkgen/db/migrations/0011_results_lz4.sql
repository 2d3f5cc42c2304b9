-- Results are compressed with lz4 instead of PostgreSQL's default, pglz.
--
-- An article's Markdown and HTML (~6 KB and ~7 KB for 800 words) are over the TOAST
-- threshold, so every finished job compresses both. pglz made that the largest part of
-- the database's CPU per finished job: inserting results cost 0.34 ms a row with pglz,
-- 0.10 ms with lz4, for 12% more bytes on disk (5.7 KB against 6.4 KB a row; measured on
-- bench/queues.py's article). Only new values are compressed with lz4: rows already
-- stored keep pglz and read as before, and the change itself is catalog-only.
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

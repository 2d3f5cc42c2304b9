-- Statuses are queued -> generating -> done, plus failed and cancelled. A job is formatted
-- and validated inside `generating`, between its provider call and its one `done` write,
-- so no statement writes `formatting`: the CHECKs now refuse it, and the running-jobs index
-- covers exactly the rows the quota, rescue, release and finish statements look for.
--
-- A row still marked `formatting` is running under its lease: it becomes `generating` and
-- keeps its owner, so that worker can still finish it (or the rescue can take it back).
UPDATE jobs SET status = 'generating' WHERE status = 'formatting';

-- One ALTER, one scan of the table to validate both new constraints.
ALTER TABLE jobs
    DROP CONSTRAINT jobs_status_check,
    DROP CONSTRAINT jobs_check,
    ADD CONSTRAINT jobs_status_known
        CHECK (status IN ('queued', 'generating', 'done', 'failed', 'cancelled')),
    ADD CONSTRAINT jobs_leased_iff_generating
        CHECK ((status = 'generating') = (lease_owner IS NOT NULL));

DROP INDEX jobs_running_idx;
CREATE INDEX jobs_running_idx ON jobs (account_id, lease_owner) WHERE status = 'generating';

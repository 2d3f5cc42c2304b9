-- A job's lease is its worker's heartbeat row (one write per worker, not per job), so the
-- per-job expiry written at claim time was never read and only misled: it "expired" while
-- the job was still alive and leased. Dropping a column touches no rows.
ALTER TABLE jobs DROP COLUMN lease_expires_at;

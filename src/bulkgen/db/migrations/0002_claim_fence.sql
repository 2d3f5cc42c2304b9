-- Each claim of a job gets its own number, and finishing is fenced on it as well as on
-- the owner: an outcome that arrives late (an ambiguous commit retried, a job rescued and
-- claimed again by the same worker) can never land on a newer claim of the same job.
ALTER TABLE jobs ADD COLUMN claims integer NOT NULL DEFAULT 0;

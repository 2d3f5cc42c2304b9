-- Where the fair claim's round-robin over accounts resumes: the last account it served.
--
-- The claim used to visit every account with queued work, every time, and break ties
-- between equally busy accounts by id: its cost grew with the number of waiting accounts
-- (90 ms for a claim of 50 with 5,000 of them, 10,000 rows locked), and when accounts
-- outnumbered the free slots the lowest ids were served first, again and again. With this
-- cursor each claim visits only about twice its size in accounts, starting after the last
-- one served, so its cost follows the claim's size and every account gets its turn.
--
-- One row, always. A claim that finds it locked by another claim leaves it to that one;
-- a missing row only makes the claim start from the first account.
CREATE TABLE claim_cursor (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    account_id bigint NOT NULL DEFAULT 0
);
INSERT INTO claim_cursor DEFAULT VALUES;

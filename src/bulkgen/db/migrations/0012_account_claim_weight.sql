-- An account's weight in the fair claim: when accounts wait together, each is offered a
-- share of a claim in proportion to its weight, and the one with the fewest jobs running
-- per unit of weight is served first. Every account weighs 1 unless an operator says
-- otherwise (`bulkgen accounts set-weight`); a constant default adds the column without
-- rewriting the table.
ALTER TABLE accounts
    ADD COLUMN claim_weight integer NOT NULL DEFAULT 1
        CONSTRAINT accounts_claim_weight_range CHECK (claim_weight BETWEEN 1 AND 100);

"""When the status writer flushes, and when free slots are worth a claim: pure decisions."""

from __future__ import annotations

from bulkgen.db.writer import FlushPolicy
from bulkgen.worker import claim_quorum

POLICY = FlushPolicy(max_rows=100, quiet_s=0.01, max_wait_s=0.2)


def test_nothing_else_running_means_write_at_once() -> None:
    assert POLICY.wait_s(waiting=1, running=0, age_s=0.0, quiet_s=0.0) == 0.0
    assert POLICY.wait_s(waiting=20, running=0, age_s=0.0, quiet_s=0.0) == 0.0


def test_an_unknown_number_running_means_write_at_once() -> None:
    assert POLICY.wait_s(waiting=3, running=None, age_s=0.0, quiet_s=0.0) == 0.0


def test_jobs_still_running_are_waited_for_while_they_keep_finishing() -> None:
    # The newest outcome just came: wait the quiet interval for the next one.
    assert POLICY.wait_s(waiting=3, running=5, age_s=0.05, quiet_s=0.0) == 0.01
    # Part of it has passed: only the rest.
    assert round(POLICY.wait_s(waiting=3, running=5, age_s=0.05, quiet_s=0.004), 6) == 0.006
    # Nothing came for the whole interval: the others are busy elsewhere, write.
    assert POLICY.wait_s(waiting=3, running=5, age_s=0.05, quiet_s=0.01) == 0.0


def test_a_steady_trickle_cannot_hold_outcomes_past_the_cap() -> None:
    assert round(POLICY.wait_s(waiting=3, running=5, age_s=0.195, quiet_s=0.0), 6) == 0.005
    assert POLICY.wait_s(waiting=3, running=5, age_s=0.2, quiet_s=0.0) == 0.0


def test_a_full_statement_is_written_at_once() -> None:
    assert POLICY.wait_s(waiting=100, running=50, age_s=0.0, quiet_s=0.0) == 0.0
    lingering = FlushPolicy(max_rows=100, linger_s=3600.0)
    assert lingering.wait_s(waiting=100, running=None, age_s=0.0, quiet_s=0.0) == 0.0


def test_linger_is_a_fixed_wait_on_top() -> None:
    lingering = FlushPolicy(linger_s=0.05, quiet_s=0.01, max_wait_s=0.2)
    assert lingering.wait_s(waiting=1, running=0, age_s=0.01, quiet_s=0.01) == 0.04
    assert lingering.wait_s(waiting=1, running=None, age_s=0.05, quiet_s=0.05) == 0.0


def test_a_claim_waits_for_half_the_slots() -> None:
    assert claim_quorum(1) == 1
    assert claim_quorum(2) == 1
    assert claim_quorum(20) == 10
    assert claim_quorum(51) == 25

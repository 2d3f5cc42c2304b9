from bulkgen.progress import _time_left


def test_time_left_follows_the_rate_and_is_blank_when_unknown_or_over() -> None:
    assert _time_left(100, 10.0) == "0:10 left"
    assert _time_left(150, 2.0) == "1:15 left"
    assert _time_left(5, 0.0) == ""  # no job has ended yet: no guess
    assert _time_left(0, 12.5) == ""  # the batch is over

import io
import logging

from bulkgen.logs import EventFormatter, configure


def test_event_lines_carry_their_context() -> None:
    stream = io.StringIO()
    configure(logging.INFO, stream)
    try:
        logging.getLogger("bulkgen.test").warning(
            "job.failed", extra={"job_id": 7, "error_kind": "server_error"}
        )
    finally:
        logging.getLogger().handlers.clear()
    line = stream.getvalue().strip()
    assert "WARNING" in line and "job.failed" in line
    assert "job_id=7" in line and "error_kind=server_error" in line


def test_plain_records_have_no_trailing_context() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "worker.started", None, None)
    assert EventFormatter().format(record).endswith("worker.started")


def test_uvicorns_coloured_copy_of_the_message_is_not_repeated() -> None:
    record = logging.LogRecord("uvicorn", logging.INFO, "f", 1, "Started server", None, None)
    record.color_message = "\x1b[36mStarted server\x1b[0m"
    assert EventFormatter().format(record).endswith("Started server")

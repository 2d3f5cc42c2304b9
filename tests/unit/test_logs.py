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


def test_a_driver_traceback_becomes_one_event_line() -> None:
    stream = io.StringIO()
    configure(logging.INFO, stream)
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
        except ConnectionRefusedError:
            logging.getLogger("asyncpg.pool").warning(
                "Failed to restore the pool connection floor; retrying", exc_info=True
            )
    finally:
        logging.getLogger().handlers.clear()
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    assert "db.driver_error" in lines[0] and "Traceback" not in lines[0]
    assert "detail=Failed to restore the pool connection floor" in lines[0]
    assert "error=ConnectionRefusedError" in lines[0] and "5432" in lines[0]

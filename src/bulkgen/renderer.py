"""Prompt rendering bounded in time, memory and size, off the event loop.

A batch's template comes from its account, and Jinja's sandbox limits what a template may
touch, not how long it runs: nested loops, each within the sandbox's ``range`` cap, keep one
``render`` call busy for seconds or minutes, and no thread can be interrupted. Rendered on
the worker's event loop, such a template stops its heartbeat, so other workers judge it dead
and run its jobs again. So templates render in child processes
(:mod:`bulkgen.render_child`), each with an address-space cap, and the event loop only
writes and reads a pipe: a child that misses the deadline is killed and replaced, and the
row fails as invalid input, once.

- Children start on first use and are reused, so a normal render costs one pipe round
  trip more than rendering in place (measured by ``bench/render.py``).
- A child is sent a template's text once; later rows send only its version.
- A template that missed the deadline once is *quarantined*: its later rows render in a
  lane of their own (one child), so one account's slow template costs its own rows the
  deadline each, while every other template keeps the normal lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bulkgen.errors import ConfigError, InputError, RendererUnavailable
from bulkgen.prompts import PromptTemplate
from bulkgen.render_child import HEADER, encode_frame

__all__ = ["RenderLimits", "TemplateRenderer"]

logger = logging.getLogger(__name__)

Messages = tuple[tuple[str, str], ...]

STARTUP_TIMEOUT_S = 60.0  # an interpreter start on a loaded machine, not a render
MAX_QUARANTINED = 10_000  # template versions remembered as slow (a hostile account makes many)
MAX_KNOWN = 1_000  # template versions a parent remembers having sent to one child


@dataclass(frozen=True)
class RenderLimits:
    """What one render may use: wall time, output characters, and its process's memory."""

    timeout_s: float
    max_chars: int
    memory_bytes: int = 512 * 2**20  # a cap for the child, not a knob: no setting names it


class _ChildDied(Exception):
    """The render process closed its pipe or exited in the middle of a request."""


class _Child:
    """One render process and the template versions it has been sent."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._known: set[str] = set()

    @classmethod
    async def start(cls, memory_bytes: int) -> _Child:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bulkgen.render_child",
                str(memory_bytes),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise RendererUnavailable(f"cannot start a render process: {exc}") from exc
        child = cls(process)
        try:
            await asyncio.wait_for(child._receive(), STARTUP_TIMEOUT_S)
        except (TimeoutError, _ChildDied) as exc:
            await child.kill()
            raise RendererUnavailable("a render process did not start") from exc
        except BaseException:
            await child.kill()
            raise
        return child

    async def render(
        self, template: PromptTemplate, variables: Mapping[str, object], max_chars: int
    ) -> dict[str, Any]:
        request: dict[str, Any] = {
            "version": template.version,
            "variables": dict(variables),
            "max_chars": max_chars,
        }
        if template.version not in self._known:
            request["text"] = template.text
        reply = await self._call(request)
        if reply.get("unknown"):  # the child let the template go: send it again
            reply = await self._call({**request, "text": template.text})
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known.add(template.version)
        return reply

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(encode_frame(request))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ChildDied from exc
        return await self._receive()

    async def _receive(self) -> dict[str, Any]:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            (length,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
            reply: dict[str, Any] = json.loads(await stdout.readexactly(length))
        except asyncio.IncompleteReadError as exc:
            raise _ChildDied from exc
        return reply

    async def kill(self) -> None:
        """Kill and reap; the pipes close with the process."""
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        await self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()


class _Lane:
    """At most ``size`` children, each serving one render at a time."""

    def __init__(self, size: int, limits: RenderLimits) -> None:
        self._limits = limits
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()

    async def render(self, template: PromptTemplate, variables: Mapping[str, object]) -> Messages:
        async with self._slots:
            child = (
                self._idle.pop() if self._idle else await _Child.start(self._limits.memory_bytes)
            )
            self._busy.add(child)
            try:
                async with asyncio.timeout(self._limits.timeout_s):
                    reply = await child.render(template, variables, self._limits.max_chars)
            except BaseException:
                # Timed out, cancelled or dead: its pipe may hold half an answer.
                self._busy.discard(child)
                await child.kill()
                raise
            self._busy.discard(child)
            self._idle.append(child)
        if "error" in reply:
            error = InputError(reply["error"])  # the message already names the field
            error.field = reply.get("field")
            raise error
        return tuple((role, content) for role, content in reply["messages"])

    async def aclose(self) -> None:
        children = [*self._idle, *self._busy]
        self._idle.clear()
        self._busy.clear()
        await asyncio.gather(*(child.kill() for child in children))


class TemplateRenderer:
    """Renders a job's prompt in a child process, within :class:`RenderLimits`.

    One per process (see :mod:`bulkgen.service`); ``processes`` children serve the normal
    lane, one more serves quarantined templates. Nothing starts until the first render.
    """

    def __init__(self, limits: RenderLimits, *, processes: int = 2) -> None:
        self.limits = limits
        self._lane = _Lane(processes, self.limits)
        self._quarantine = _Lane(1, self.limits)
        self._slow: set[str] = set()
        self._closed = False

    async def render(self, template: PromptTemplate, variables: Mapping[str, object]) -> Messages:
        """The messages of one job; a template that cannot render them within the limits
        -> :class:`InputError` (never retried: the same row would fail the same way)."""
        if self._closed:
            raise ConfigError("the template renderer is closed")
        slow = template.version in self._slow
        lane = self._quarantine if slow else self._lane
        try:
            return await lane.render(template, variables)
        except TimeoutError:
            if not slow:
                self._quarantine_version(template.version)
            raise InputError(
                f"the prompt template took longer than {self.limits.timeout_s:g} s to render"
            ) from None
        except _ChildDied:
            raise InputError("the prompt template crashed its render process") from None

    def _quarantine_version(self, version: str) -> None:
        if len(self._slow) >= MAX_QUARANTINED:
            self._slow.clear()
        self._slow.add(version)
        logger.info("template.quarantined", extra={"template_version": version})

    async def aclose(self) -> None:
        """Kill every child; renders after this raise."""
        self._closed = True
        await asyncio.gather(self._lane.aclose(), self._quarantine.aclose())

"""The simulator as a raw ASGI application (no framework: it must serve >1,000 req/s).

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, the Files and Batch APIs
(``/v1/files...``, ``/v1/batches...``: :mod:`batch_api`), all behind the API key when one
is set; and the control routes, open: ``GET``/``POST /_sim/config`` (read or change any
setting live, ``{"batch": {...}}`` included), ``GET /_sim/stats`` (chat counters, the chat
requests in flight, and under ``batch`` the file uploads, batch creations, Files/Batch calls
and batch rows run), ``POST /_sim/reset-stats``.

Order of checks per chat request, as OpenAI answers: authentication (401), validation
(400/404), then one fault draw, then a gateway's 401 (``echo_auth``), then quota
(``insufficient_quota``), then the rate limits (429), then server faults (5xx, hang,
reset), then the completion with its content faults. With ``max_inflight`` set, a valid
request arriving while that many are served is answered ``overload_status`` right after
the fault draw, with neither rate-limit headers nor a wait hint (a self-hosted server).
The fault is drawn before the limiter looks, so the fault sequence depends only on the
request sequence, never on timing.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from bulkgen.simulator import completion, protocol
from bulkgen.simulator.asgi import Headers, Receive, Scope, Send, read_body, respond
from bulkgen.simulator.batch_api import BatchApi, BatchStats
from bulkgen.simulator.config import ConfigError, SimConfig, apply_changes
from bulkgen.simulator.faults import FaultPicker
from bulkgen.simulator.prompt_cache import PromptCache
from bulkgen.simulator.protocol import ChatCall, InvalidRequest
from bulkgen.simulator.ratelimit import Decision, ModelLimiter
from bulkgen.simulator.stats import SimStats
from bulkgen.simulator.tokens import count_tokens

_CONNECTION_FAULTS = frozenset({"500", "502", "503", "hang", "reset"})
_LIMITER_FIELDS = ("rpm", "tpm", "burst_s", "time_scale")


class SimulatorApp:
    """An OpenAI-compatible provider with limits and faults; one instance per server."""

    def __init__(self, config: SimConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.stats = SimStats()
        self._served = 0
        self._inflight = 0  # chat requests past the overload check, not yet answered
        self._prompt_cache = PromptCache()
        self.batches = BatchApi(config, clock)
        self._install(config)

    @property
    def config(self) -> SimConfig:
        return self._config

    def _install(self, config: SimConfig) -> None:
        """Swap in a config; buckets restart full and RNGs restart from the seed."""
        self._config = config
        self.batches.configure(config)
        self._limiters: dict[str, ModelLimiter] = {}
        self._faults = FaultPicker(config.seed, config.faults)
        self._latency_rng = random.Random(f"latency:{config.seed}")
        self._authorization = (
            None if config.api_key is None else f"Bearer {config.api_key}".encode()
        )

    def update(self, changes: dict[str, Any]) -> SimConfig:
        """Apply a live change; limits are rebuilt only when a limit field changed."""
        old = self._config
        new = apply_changes(old, changes)
        limiters = self._limiters
        faults, latency_rng = self._faults, self._latency_rng
        self._install(new)
        if all(getattr(old, name) == getattr(new, name) for name in _LIMITER_FIELDS):
            self._limiters = limiters
        if old.seed == new.seed and old.faults == new.faults:
            self._faults, self._latency_rng = faults, latency_rng
        return new

    def _sim_now_s(self) -> float:
        return self._clock() * self._config.time_scale

    def _limiter(self, model: str) -> ModelLimiter:
        limiter = self._limiters.get(model)
        if limiter is None:
            cfg = self._config
            limiter = ModelLimiter(cfg.rpm, cfg.tpm, cfg.burst_s, self._sim_now_s())
            self._limiters[model] = limiter
        return limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"].rstrip("/"))
        if route == ("POST", "/v1/chat/completions"):
            await self._chat(scope, receive, send)
        elif route == ("GET", "/v1/models"):
            await self._models(scope, send)
        elif BatchApi.serves(route[1]):
            if self._authorized(scope):
                await self.batches.handle(scope, receive, send)
            else:
                await self._unauthorized(send)
        elif route[1].startswith("/_sim/"):
            await self._control(route, receive, send)
        else:
            body = protocol.error_body(f"Unknown path {route[1]}", "invalid_request_error", None)
            await respond(send, 404, body)

    def _authorized(self, scope: Scope) -> bool:
        if self._authorization is None:
            return True
        for name, value in scope["headers"]:
            if name == b"authorization":
                return bool(value == self._authorization)
        return False

    async def _unauthorized(self, send: Send) -> None:
        self.stats.errors["401"] += 1
        message = "Incorrect API key provided. You can find your API key in your settings."
        body = protocol.error_body(message, "invalid_request_error", "invalid_api_key")
        await respond(send, 401, body)

    async def _models(self, scope: Scope, send: Send) -> None:
        if not self._authorized(scope):
            await self._unauthorized(send)
            return
        await respond(send, 200, protocol.models_body(self._config.models))

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.stats.requests += 1
        if not self._authorized(scope):
            await self._unauthorized(send)
            return
        try:
            call = protocol.parse_chat_request(
                await read_body(receive), self._config.default_max_tokens
            )
        except InvalidRequest as exc:
            self.stats.errors["400"] += 1
            body = protocol.error_body(exc.message, "invalid_request_error", None, exc.param)
            await respond(send, 400, body)
            return
        if call.model not in self._config.models:
            self.stats.errors["404"] += 1
            message = f"The model `{call.model}` does not exist or you do not have access to it."
            body = protocol.error_body(message, "invalid_request_error", "model_not_found")
            await respond(send, 404, body)
            return
        fault = self._faults.pick()
        if fault == "echo_auth":
            await self._echo_auth(scope, send)
            return
        if self._config.max_inflight and self._inflight >= self._config.max_inflight:
            await self._overloaded(send)
            return
        self._inflight += 1
        self.stats.max_inflight_seen = max(self.stats.max_inflight_seen, self._inflight)
        try:
            await self._admitted_chat(call, fault, receive, send)
        finally:
            self._inflight -= 1

    async def _overloaded(self, send: Send) -> None:
        """A full server's answer: 503 "overloaded" (or a bare 429), no headers at all."""
        self.stats.overloaded += 1
        if self._config.overload_status == 429:
            message = "Too many requests in flight. Please try again later."
            body = protocol.error_body(message, "too_many_requests", None)
        else:
            message = "The server is overloaded with requests. Please try again later."
            body = protocol.error_body(message, "server_error", "overloaded")
        await respond(send, self._config.overload_status, body)

    async def _echo_auth(self, scope: Scope, send: Send) -> None:
        """A 401 that quotes the credentials it was sent, as some gateways do in front of
        OpenAI, with the key also in the masked form of OpenAI's own 401."""
        self.stats.faults["echo_auth"] += 1
        self.stats.errors["401"] += 1
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        key = header.removeprefix("Bearer ").strip()
        masked = f"{key[:6]}...{key[-4:]}" if len(key) > 12 else "***"
        message = (
            f"Upstream refused the request (Authorization: {header}). "
            f"Incorrect API key provided: {masked}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
        body = protocol.error_body(message, "invalid_request_error", "invalid_api_key")
        await respond(send, 401, body)

    async def _admitted_chat(
        self, call: ChatCall, fault: str | None, receive: Receive, send: Send
    ) -> None:
        """Quota, limits, then the fault or the completion for a valid request."""
        limiter, scale = self._limiter(call.model), self._config.time_scale
        if fault == "insufficient_quota":
            self.stats.rate_limited["insufficient_quota"] += 1
            headers = protocol.limit_headers(*limiter.reports(self._sim_now_s()), scale)
            message = "You exceeded your current quota, please check your plan and billing."
            body = protocol.error_body(message, "insufficient_quota", "insufficient_quota")
            await respond(send, 429, body, headers)
            return
        if fault == "429":
            await self._fault_429(call, limiter, send)
            return
        decision = limiter.admit(call.cost_tokens, self._sim_now_s())
        headers = protocol.limit_headers(decision.requests, decision.tokens, scale)
        if not decision.admitted:
            await self._refuse(call, decision, headers, send)
            return
        self.stats.accepted(time.time(), call.cost_tokens)
        if fault in _CONNECTION_FAULTS:
            self.stats.faults[fault] += 1
            await self._server_fault(str(fault), headers, receive, send)
            return
        await self._complete(call, fault, headers, receive, send)

    async def _fault_429(self, call: ChatCall, limiter: ModelLimiter, send: Send) -> None:
        """An injected rate-limit refusal, whatever the buckets hold (a provider that
        always says 429)."""
        self.stats.faults["429"] += 1
        self.stats.rate_limited["requests"] += 1
        headers = protocol.limit_headers(
            *limiter.reports(self._sim_now_s()), self._config.time_scale
        )
        wait_s = self._config.fault_retry_after_ms / 1000
        message = f"Rate limit reached for {call.model} (injected). Please try again in {wait_s}s."
        body = protocol.error_body(message, "requests", "rate_limit_exceeded")
        await respond(send, 429, body, headers + protocol.retry_headers(wait_s))

    async def _refuse(
        self, call: ChatCall, decision: Decision, headers: Headers, send: Send
    ) -> None:
        """A 429 in OpenAI's shape, with the wait converted to wall-clock time."""
        kind = decision.refused_by or "requests"
        self.stats.rate_limited[kind] += 1
        wall_wait_s = decision.retry_after_s / self._config.time_scale
        requested = 1 if kind == "requests" else call.cost_tokens
        message = protocol.rate_limit_message(call.model, decision, requested, wall_wait_s)
        body = protocol.error_body(message, kind, "rate_limit_exceeded")
        await respond(send, 429, body, headers + protocol.retry_headers(wall_wait_s))

    async def _server_fault(
        self, fault: str, headers: Headers, receive: Receive, send: Send
    ) -> None:
        """A 5xx with a JSON body, a hang until the client leaves, or a TCP reset."""
        if fault == "hang":
            await _until_disconnect(receive, self._config.hang_s)
        elif fault == "reset":
            _reset_connection(send)
            await _until_disconnect(receive, 5.0)
        else:
            status = int(fault)
            body = protocol.error_body(protocol.SERVER_FAULTS[fault], "server_error", None)
            await respond(send, status, body, headers)

    async def _complete(
        self, call: ChatCall, fault: str | None, headers: Headers, receive: Receive, send: Send
    ) -> None:
        content, finish_reason = completion.answer(self._config.seed, call, fault)
        tokens = count_tokens(content)
        delay_s = self._latency_s(tokens)
        if delay_s > 0 and await _until_disconnect(receive, delay_s):
            return
        self._served += 1
        cached = 0
        if self._config.prompt_cache:
            cached = min(call.prompt_tokens, self._prompt_cache.serve(call.model, call.prompt))
        body = protocol.completion_body(
            f"chatcmpl-sim{self._served:010d}",
            int(time.time()),
            call,
            content,
            finish_reason,
            tokens,
            cached,
        )
        if fault is not None:
            self.stats.faults[fault] += 1
            if fault == "malformed":
                body = body[: len(body) // 2]
        self.stats.ok += 1
        self.stats.prompt_tokens += call.prompt_tokens
        self.stats.cached_tokens += cached
        self.stats.completion_tokens += tokens
        await respond(send, 200, body, headers)

    def _latency_s(self, completion_tokens: int) -> float:
        """Wall-clock latency: (TTFT + tokens / speed) with jitter, divided by time_scale."""
        cfg = self._config
        base_s = cfg.ttft_ms / 1000.0
        if cfg.tokens_per_s > 0:
            base_s += completion_tokens / cfg.tokens_per_s
        if base_s <= 0:
            return 0.0
        if cfg.jitter > 0:
            base_s *= 1.0 + cfg.jitter * (2.0 * self._latency_rng.random() - 1.0)
        return base_s / cfg.time_scale

    async def _control(self, route: tuple[str, str], receive: Receive, send: Send) -> None:
        """``/_sim/*``: read or change the config, read or clear the stats."""
        if route == ("GET", "/_sim/config"):
            await respond(send, 200, json.dumps(self._config.to_json()).encode())
        elif route == ("POST", "/_sim/config"):
            try:
                changes = json.loads(await read_body(receive))
                if not isinstance(changes, dict):
                    raise ConfigError("the config change must be a JSON object")
                self.update(changes)
            except (ConfigError, ValueError) as exc:
                body = protocol.error_body(str(exc), "invalid_request_error", None)
                await respond(send, 400, body)
                return
            await respond(send, 200, json.dumps(self._config.to_json()).encode())
        elif route == ("GET", "/_sim/stats"):
            stats = {
                **self.stats.to_json(),
                "inflight": self._inflight,
                "batch": self.batches.stats.to_json(),
            }
            await respond(send, 200, json.dumps(stats).encode())
        elif route == ("POST", "/_sim/reset-stats"):
            self.stats = SimStats()
            self.batches.stats = BatchStats()
            await respond(send, 200, b"{}")
        else:
            await respond(send, 404, protocol.error_body("Unknown path", "not_found", None))


async def _until_disconnect(receive: Receive, timeout_s: float) -> bool:
    """Wait up to ``timeout_s``; True if the client went away first.

    Waiting on ``receive`` (the body was read already) instead of a bare sleep frees the
    server as soon as a client gives up, so a hung request never outlives its client.
    """

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(disconnected(), timeout_s)
    except TimeoutError:
        return False
    return True


def _reset_connection(send: Send) -> None:
    """Abort the TCP connection with an RST and no response, as a dying proxy does.

    uvicorn's ``send`` is a method of the request cycle that owns the transport; with
    SO_LINGER 0 the abort sends a reset instead of an orderly close.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionAbortedError("simulated reset: no transport to abort")
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return

"""The one exception tree of bulkgen.

Everything bulkgen raises on purpose derives from :class:`BulkgenError`. Errors of the
libraries underneath are translated at one boundary each, with ``raise ... from exc``:
asyncpg's in ``db/pool.py`` (:class:`StorageError`), openai's and httpx's in
``providers/openai_compat.py`` (:class:`ProviderError` subclasses; the Batch API client
in ``providers/openai_batch.py`` and its failed rows go through the same table), jinja2's in
``prompts.py``, the HTTP API's answers in ``client.py`` (:class:`ApiError`, or
:class:`InputError`/:class:`ConfigError` for a 422). Redis errors never reach a caller:
``redis_guard.py`` turns each into a bypass (a cache miss, the in-process limiter or
budget ledger). Callers only ever catch our types::

    BulkgenError
    ├── ConfigError                 invalid settings or options
    ├── InputError                  a batch file or list that cannot be accepted (row, field)
    ├── StorageError                the database failed or is unreachable
    ├── BudgetExceeded              a batch's spending cap would be passed
    ├── BudgetContended             the rest of a cap is held by calls still in flight
    ├── RequestTooLarge             one request is bigger than the whole token budget
    ├── RendererUnavailable         no process to render prompts in could be started
    ├── Conflict                    valid, but refused by the state of what it acts on
    ├── ApiError                    the HTTP API refused a Client call or could not be reached
    └── ProviderError               one provider call failed; knows if a retry may help
        ├── RateLimited             429 rate_limit_exceeded (snooze, never burns an attempt)
        ├── ProviderOverloaded      503/529 "overloaded", a 429 without limit headers (snooze)
        ├── QuotaExhausted          429 insufficient_quota (fails at once)
        ├── ProviderRejected        400/401/403/404/422 (fails at once)
        ├── ProviderUnavailable     5xx
        ├── ProviderTimeout         no answer in time
        ├── ProviderConnectionError connection refused/reset
        └── InvalidOutput           empty, malformed, truncated, filtered or too short output

``ProviderError.kind`` is the short name stored in ``jobs.error_kind``.
"""

from __future__ import annotations


class BulkgenError(Exception):
    """Root of every error bulkgen raises on purpose."""


class ConfigError(BulkgenError):
    """Settings or options that cannot work; raised at the edge, before any work starts."""


class InputError(BulkgenError):
    """Batch input rejected whole; ``row`` is 1-based (data rows), ``field`` names the column."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None) -> None:
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(f"{prefix}{message}")
        self.row = row
        self.field = field


class StorageError(BulkgenError):
    """The database refused an operation or could not be reached.

    ``transient`` is True when the same statement may succeed later (connection lost,
    server shutting down, too many connections, deadlock, timeout) and False when the
    data itself was refused (a constraint, an invalid value): retrying that is futile.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class BudgetExceeded(BulkgenError):
    """Sending one more request would take a batch past its spending cap."""


class BudgetContended(BulkgenError):
    """What is left of a batch's cap is reserved by calls still in flight; once they settle
    it may be enough, so the job waits (no attempt burnt) instead of being cancelled."""


class RequestTooLarge(BulkgenError):
    """A single request needs more tokens than the whole per-minute budget: it can never run."""


class RendererUnavailable(BulkgenError):
    """A prompt render process could not be started: the worker's trouble, not the job's,
    so the job waits (no attempt burnt) as it does for a database blip."""


class ProviderError(BulkgenError):
    """A provider call failed.

    ``retryable`` says whether the same request may succeed later; ``retry_after_s`` carries
    the provider's own hint (``retry-after``/``retry-after-ms``) when it gave one.
    """

    kind = "provider_error"
    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


class RateLimited(ProviderError):
    """429 rate limit: the request was fine, the fleet was too fast."""

    kind = "rate_limited"


class ProviderOverloaded(ProviderError):
    """The server is full: a 503 (or 529) saying it is overloaded, or a 429 with neither
    rate-limit headers nor a wait hint, as self-hosted servers and gateways answer when
    more requests are in flight than they take. The request was fine, the fleet sent too
    many at once: it snoozes like a 429, never burning an attempt."""

    kind = "overloaded"


class QuotaExhausted(ProviderError):
    """429 insufficient_quota: no retry can help until someone pays."""

    kind = "insufficient_quota"
    retryable = False


class ProviderRejected(ProviderError):
    """The provider refused the request itself (400/401/403/404/422)."""

    kind = "rejected"
    retryable = False


class ProviderUnavailable(ProviderError):
    """The provider answered 5xx."""

    kind = "server_error"


class ProviderTimeout(ProviderError):
    """No complete answer within the timeout."""

    kind = "timeout"


class ProviderConnectionError(ProviderError):
    """The connection failed or was dropped."""

    kind = "connection_error"


class InvalidOutput(ProviderError):
    """The provider answered, but not with usable content (empty, malformed, truncated)."""

    kind = "invalid_output"

    def __init__(self, message: str, *, reason: str = "invalid_output") -> None:
        super().__init__(message)
        self.kind = reason  # "empty", "truncated", "malformed", "too_short", ...


class Conflict(BulkgenError):
    """A valid request that the current state refuses: retrying a cancelled batch, or an
    idempotency key sent again with a different request. ``kind`` names which."""

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class ApiError(BulkgenError):
    """The HTTP API answered a :class:`~bulkgen.client.Client` call with an error (401,
    404, 409, 413, 429, 5xx, ...), or could not be reached (``status`` None). ``kind`` is
    the API's own name for it (``not_found``, ``unauthorized``, ...); ``retry_after_s``
    is the server's ``Retry-After`` when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        kind: str,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.retry_after_s = retry_after_s

"""Cache keys: one SHA-256 over everything that can change a generated article.

The invariant: two requests share a key only if the provider would be asked exactly the
same thing on behalf of the same scope. So the key covers the scope (account by default,
so one customer never receives another's article), the provider base URL, the model, the
rendered messages, every generation option and the prompt template's version - and the
JSON it hashes is canonical (sorted keys, no whitespace, ``1 == 1.0``, ``0.70 == 0.7``),
so the order in which options were given never splits the cache.

In Redis the digest is the key's hash tag (``bulkgen:gen:{<sha256>}``), and the
single-flight lock carries the same one: an entry and its lock sit in one Redis Cluster
slot, so a script or transaction touching both stays legal there, while distinct requests
still spread over every master.
"""

from __future__ import annotations

import hashlib
import json
import math
from decimal import Decimal
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from bulkgen.errors import ConfigError
from bulkgen.models import ChatRequest

KEY_PREFIX = "bulkgen:gen:"
LOCK_PREFIX = "bulkgen:genlock:"
_KEY_VERSION = 1  # bump when the canonical form changes, so old entries are never misread


def cache_scope(mode: Literal["account", "global"], account_id: str) -> str:
    """``account:<id>`` unless a deployment explicitly opts in to one ``global`` cache."""
    if mode == "global":
        return "global"
    if mode != "account":
        raise ConfigError(f"cache scope must be 'account' or 'global', got {mode!r}")
    if not account_id.strip():
        raise ConfigError("an account-scoped cache key needs a non-empty account id")
    return f"account:{account_id}"


def normalise_base_url(base_url: str) -> str:
    """``HTTPS://API.openai.com/v1/`` and ``https://api.openai.com/v1`` are one provider."""
    parts = urlsplit(base_url.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _canonical(value: object, where: str) -> object:
    """A JSON-ready value in which equal numbers have one spelling (``1.0`` -> ``1``)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float | Decimal):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(f"option {where} must be a finite number, got {value!r}")
        return int(number) if number.is_integer() else number
    if isinstance(value, list | tuple):
        return [_canonical(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    raise ConfigError(f"option {where} has a type that cannot be cached: {type(value).__name__}")


def _options(request: ChatRequest) -> dict[str, object]:
    options: dict[str, object] = {}
    for name, value in request.extra:
        if name in options and options[name] != _canonical(value, name):
            raise ConfigError(f"option {name!r} is given twice with different values")
        options[name] = _canonical(value, name)
    return options


def canonical_json(
    *, scope: str, base_url: str, request: ChatRequest, template_version: str
) -> str:
    """The exact text hashed by :func:`cache_key`; exposed so a key can be explained."""
    document = {
        "v": _KEY_VERSION,
        "scope": scope,
        "base_url": normalise_base_url(base_url),
        "model": request.model,
        "messages": [[role, content] for role, content in request.messages],
        "max_tokens": request.max_tokens,
        "temperature": _canonical(request.temperature, "temperature"),
        "options": _options(request),
        "template_version": template_version,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(*, scope: str, base_url: str, request: ChatRequest, template_version: str) -> str:
    """``bulkgen:gen:{<sha256>}`` of the canonical request; equal only for equal outputs."""
    text = canonical_json(
        scope=scope, base_url=base_url, request=request, template_version=template_version
    )
    return f"{KEY_PREFIX}{{{hashlib.sha256(text.encode('utf-8')).hexdigest()}}}"


def lock_key(key: str) -> str:
    """The single-flight lock name for a cache key; kept outside the ``bulkgen:gen:`` space,
    with the cache key's hash tag (``{<sha256>}``), so both hash to the same slot."""
    digest = key.removeprefix(KEY_PREFIX)
    return LOCK_PREFIX + digest

"""What every route depends on: the process's services, and the account calling.

Every ``/v1`` route takes :data:`CallerDep`, so no route can be reached without a valid
key, nor past the account's request rate (:mod:`bulkgen.api.rate_limit`): the rate is
checked after the key, so it is always the caller's own budget that pays, and a stranger
without a key cannot spend anyone's.

The key is read from ``Authorization: Bearer <key>``, hashed, looked up, and then dropped:
it is never stored, logged or put in an error message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bulkgen.accounts import Caller, authenticate
from bulkgen.api.errors import ApiError
from bulkgen.api.rate_limit import AccountLimiter, retry_after_s
from bulkgen.service import Services

__all__ = ["CallerDep", "ServicesDep", "admit", "get_caller", "get_services", "limited_caller"]

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `bulkgen accounts create NAME`, as `Bearer bgk_...`.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_caller(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "no API key: send it as the header `Authorization: Bearer <key>`",
            headers=_CHALLENGE,
        )
    caller = await authenticate(services.store, credentials.credentials)
    if caller is None:
        raise ApiError(
            401,
            "unauthorized",
            "the API key is not valid: it is wrong, or it was rotated or revoked",
            headers=_CHALLENGE,
        )
    return caller


async def limited_caller(
    request: Request, caller: Annotated[Caller, Depends(get_caller)]
) -> Caller:
    """The authenticated caller, once its account's budget admits one more request."""
    await admit(request, caller)
    return caller


async def admit(request: Request, caller: Caller) -> None:
    """Spend one request of ``caller``'s budget, or raise 429: the API and the dashboard
    share this, so a browser tab pays from the same budget as a script."""
    limiter: AccountLimiter = request.app.state.account_limiter
    wait_s = await limiter.admit(caller.id)
    if wait_s > 0:
        services = get_services(request)
        services.metrics.inc("api.rate_limited")
        retry_after = retry_after_s(wait_s)
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests for this account; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


CallerDep = Annotated[Caller, Depends(limited_caller)]

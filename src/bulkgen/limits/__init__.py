"""Fleet-wide rate limiting: admission before sending, learned from the provider, shared.

See ``governor.py`` for the door every provider call passes through, ``headers.py`` for
what providers report, ``breaker.py`` for the circuit breaker, ``policy.py`` for how the
target rate and the concurrency are chosen and ``adaptive.py`` for how the concurrency a
server takes is found when it announces no limits.
"""

from bulkgen.limits.breaker import BreakerState, CircuitBreaker
from bulkgen.limits.governor import (
    GovernorConfig,
    RateGovernor,
    ReconcileMode,
    Slot,
    build_governor,
    governor_config,
)
from bulkgen.limits.headers import RateLimitSnapshot, parse_duration_s, parse_rate_limit_headers
from bulkgen.limits.keys import LimitKey, api_key_id
from bulkgen.limits.policy import PolicyConfig, RatePolicy

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "GovernorConfig",
    "LimitKey",
    "PolicyConfig",
    "RateGovernor",
    "RateLimitSnapshot",
    "RatePolicy",
    "ReconcileMode",
    "Slot",
    "api_key_id",
    "build_governor",
    "governor_config",
    "parse_duration_s",
    "parse_rate_limit_headers",
]

"""Never pay twice: the result cache, its keys, and single-flight for requests in flight.

Layout: ``keys`` (what makes two requests identical), ``result`` (what is stored and the
:class:`ResultCache` protocol), ``memory`` / ``redis_cache`` (backends), ``singleflight``
and ``factory``. Every Redis call goes through :mod:`bulkgen.redis_guard` (shared with the
limiter and the budget ledger), so a slow or dead Redis degrades to misses, never to failed
jobs. The names below are the public surface.
"""

from bulkgen.cache.factory import build_cache
from bulkgen.cache.keys import KEY_PREFIX, cache_key, cache_scope, canonical_json
from bulkgen.cache.memory import MemoryCache, NullCache
from bulkgen.cache.redis_cache import RedisCache
from bulkgen.cache.result import CachedResult, ResultCache
from bulkgen.cache.singleflight import SingleFlight, Source
from bulkgen.redis_guard import BypassPolicy, RedisGuard

__all__ = [
    "KEY_PREFIX",
    "BypassPolicy",
    "CachedResult",
    "MemoryCache",
    "NullCache",
    "RedisCache",
    "RedisGuard",
    "ResultCache",
    "SingleFlight",
    "Source",
    "build_cache",
    "cache_key",
    "cache_scope",
    "canonical_json",
]

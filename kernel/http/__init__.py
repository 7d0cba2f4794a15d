"""HTTP hardening and rate limits: the layer every request crosses before its handler.

- :mod:`kernel.http.middleware`: request id, client address behind trusted proxies, body-size
  limit, security headers (:func:`hardening` installs it around a built app).
- :mod:`kernel.http.ratelimit`: atomic GCRA buckets in Redis (:class:`RateLimiter`), the
  app-level :func:`rate_limit_guard`, and :func:`check` for custom buckets.
"""

from __future__ import annotations

from kernel.http.middleware import EXPOSED_HEADERS, HardeningMiddleware, hardening
from kernel.http.ratelimit import Decision, RateLimiter, check, rate_limit_guard

__all__ = [
    "EXPOSED_HEADERS",
    "Decision",
    "HardeningMiddleware",
    "RateLimiter",
    "check",
    "hardening",
    "rate_limit_guard",
]

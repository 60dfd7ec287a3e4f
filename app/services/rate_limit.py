"""Per-key request rate on the prediction endpoints: a token bucket per API key, in process.

Each API process keeps its own buckets, so N replicas admit up to N times the configured rate
per key; size the rate per replica (or put a shared limiter in the proxy in front of them).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict

from app.core.errors import TooManyRequestsError

# Buckets of keys not seen for a while are dropped; a returning key starts with a full bucket.
MAX_TRACKED_KEYS = 10_000


class RateLimiter:
    def __init__(self, *, rate_per_second: float, burst: int) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self._buckets: OrderedDict[uuid.UUID, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def acquire(self, key_id: uuid.UUID, *, now: float | None = None) -> None:
        """Take one token for this key, or raise TooManyRequestsError with Retry-After."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, updated = self._buckets.pop(key_id, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise TooManyRequestsError(
                    f"this API key is over {self.rate:g} prediction requests per second "
                    f"(bursts of {self.burst:g}); retry in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            self._buckets[key_id] = (tokens - 1.0, now)
            while len(self._buckets) > MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)

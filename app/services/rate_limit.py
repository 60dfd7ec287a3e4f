"""Per-key request rate on the prediction endpoints: a token bucket per API key.

`RateLimiter` keeps its buckets in this process: N API replicas then admit up to N times the
configured rate per key. `RedisRateLimiter` keeps them in Redis (`SMALLVISION_REDIS_URL`), so
every replica takes from the same bucket and the limit holds for the deployment as a whole.
Both refill `rate_per_second` tokens a second up to `burst`, take one per request, and refuse
with TooManyRequestsError (429, `Retry-After`: whole seconds until the next token) when the
bucket holds less than one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app.core.errors import TooManyRequestsError
from app.core.metrics import RATE_LIMIT_LOCAL_CHECKS

logger = logging.getLogger(__name__)

# Buckets of keys not seen for a while are dropped; a returning key starts with a full bucket.
MAX_TRACKED_KEYS = 10_000


class PredictRateLimiter(Protocol):
    """What the prediction endpoints ask before they run: one of the limiters below."""

    async def acquire(self, key_id: uuid.UUID) -> None:
        """Take one token for this key, or raise TooManyRequestsError with Retry-After."""

    async def close(self) -> None:
        """Release what the limiter holds (at shutdown)."""


PREDICTIONS_REFUSED = "this API key is over {rate:g} prediction requests per second"
FAILED_KEYS_REFUSED = "this address sent over {rate:g} invalid API keys per second"


def _refused(
    *, rate: float, burst: float, tokens: float, what: str = PREDICTIONS_REFUSED
) -> TooManyRequestsError:
    wait = math.ceil((1.0 - tokens) / rate)
    return TooManyRequestsError(
        f"{what.format(rate=rate)} (bursts of {burst:g}); retry in {wait} s",
        headers={"Retry-After": str(wait)},
    )


class RateLimiter:
    """Token buckets in this process's memory (one API process, or no Redis configured),
    keyed by an API key's id, or by anything else (a client address); `what` is the refusal's
    message, with {rate}."""

    def __init__(
        self, *, rate_per_second: float, burst: int, what: str = PREDICTIONS_REFUSED
    ) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.what = what
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    async def acquire(self, key_id: uuid.UUID) -> None:
        """Take one token for this key, or raise TooManyRequestsError with Retry-After."""
        self.take(key_id)

    async def close(self) -> None:
        """Nothing to release: the buckets are plain memory."""

    def take(self, key: Hashable, *, now: float | None = None, spend: bool = True) -> None:
        """`acquire` at `now` (time.monotonic() seconds; tests pass their own). With
        spend=False only whether a token is left is checked: none is taken."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, updated = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - updated) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise _refused(rate=self.rate, burst=self.burst, tokens=tokens, what=self.what)
            self._buckets[key] = (tokens - 1.0 if spend else tokens, now)
            while len(self._buckets) > MAX_TRACKED_KEYS:
                self._buckets.popitem(last=False)


# KEYS[1]: the bucket, a hash {tokens, s, us}; ARGV: rate per second, burst.
# Returns {1 if a token was taken else 0, the tokens left as a string} (Redis truncates Lua
# numbers to integers on the way out).
# The clock is the Redis server's TIME, so API replicas whose clocks disagree still share one
# bucket; seconds and microseconds are kept apart because a double printed by Lua's tostring
# keeps 14 digits, 0.1 ms of an epoch timestamp. A bucket's key expires once it would have
# refilled to `burst`: a missing key and a full bucket mean the same, so idle keys cost nothing.
BUCKET_SCRIPT = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = redis.call('TIME')
local now_s, now_us = tonumber(now[1]), tonumber(now[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 's', 'us')
local tokens = burst
if state[1] then
  local elapsed = (now_s - tonumber(state[2])) + (now_us - tonumber(state[3])) / 1e6
  -- a failed-over Redis whose clock is behind must not take tokens away
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(burst, tonumber(state[1]) + elapsed * rate)
end
local taken = 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 's', now[1], 'us', now[2])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((burst - tokens) / rate * 1000)))
return {taken, string.format('%.17g', tokens)}
"""

KEY_PREFIX = "smallvision:predict-rate:"

# After Redis failed, requests use this process's own buckets for this long before Redis is
# asked again: an unreachable Redis costs one request per interval its timeout, not every one.
REDIS_RETRY_SECONDS = 5.0
# A Redis round trip is well under a millisecond on a LAN; one that takes longer than this is
# treated as Redis being down rather than added to every prediction's latency.
REDIS_TIMEOUT_SECONDS = 0.25


class RedisRateLimiter:
    """Token buckets in Redis, shared by every API process configured with the same Redis.

    One Lua script reads, refills, takes and writes a bucket: Redis runs a script atomically,
    so concurrent requests on any number of replicas never take the same token twice. It is
    sent by EVALSHA (redis-py loads it again after a SCRIPT FLUSH or on a fresh server).

    When Redis cannot be reached (an error, or no answer within REDIS_TIMEOUT_SECONDS), this
    process checks requests against its own in-memory buckets for the next
    REDIS_RETRY_SECONDS, logs a warning once per interval, and counts each request checked that
    way in `smallvision_rate_limit_local_checks_total`. That fails open, but only as far as the
    per-process limit: Redis holds the limiter's state, nothing serving needs, and failing
    closed would turn a Redis outage into a prediction outage; with no limit at all, one key
    could take every replica's capacity while Redis is away. Meanwhile a key gets at most its
    burst and rate from each replica, as when no Redis is configured.
    """

    def __init__(
        self,
        *,
        client: redis.asyncio.Redis,
        rate_per_second: float,
        burst: int,
        retry_seconds: float = REDIS_RETRY_SECONDS,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self.retry_seconds = retry_seconds
        self._client = client
        self._script = client.register_script(BUCKET_SCRIPT)
        self._local = RateLimiter(rate_per_second=rate_per_second, burst=burst)
        self._redis_skipped_until = 0.0

    @classmethod
    def from_url(cls, url: str, *, rate_per_second: float, burst: int) -> RedisRateLimiter:
        """A limiter on the Redis at `url` (connections are opened on first use)."""
        # asyncio, not the sync client in the thread pool: per check against a local Redis,
        # 0.19-0.27 ms against 0.30-0.42 ms (two runs), and 2-3x faster for 32 at once.
        client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            # One immediate retry, on a broken connection only (a pooled one that a Redis
            # restart closed); never redis-py's default backoff of up to seconds per request.
            retry=Retry(NoBackoff(), retries=1, supported_errors=(RedisConnectionError,)),
        )
        return cls(client=client, rate_per_second=rate_per_second, burst=burst)

    async def acquire(self, key_id: uuid.UUID) -> None:
        """Take one token for this key, or raise TooManyRequestsError with Retry-After."""
        if time.monotonic() >= self._redis_skipped_until:
            try:
                taken, tokens = await self._script(
                    keys=[f"{KEY_PREFIX}{key_id}"], args=[repr(self.rate), self.burst]
                )
            except RedisError as exc:
                self._skip_redis(exc)
            else:
                if not taken:
                    raise _refused(rate=self.rate, burst=self.burst, tokens=float(tokens))
                return
        RATE_LIMIT_LOCAL_CHECKS.inc()
        self._local.take(key_id)

    def _skip_redis(self, exc: RedisError) -> None:
        logger.warning(
            "rate limits: Redis did not answer (%s); this API process applies its own limits "
            "for the next %g s",
            exc,
            self.retry_seconds,
        )
        self._redis_skipped_until = time.monotonic() + self.retry_seconds

    async def close(self) -> None:
        """Close the Redis connections (at shutdown)."""
        await self._client.aclose()


def predict_rate_limiter(
    *, redis_url: str | None, rate_per_second: float, burst: int
) -> PredictRateLimiter:
    """The limiter of this API process: shared in Redis when a Redis URL is set, else local."""
    if redis_url:
        return RedisRateLimiter.from_url(redis_url, rate_per_second=rate_per_second, burst=burst)
    return RateLimiter(rate_per_second=rate_per_second, burst=burst)

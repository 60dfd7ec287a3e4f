"""The shared prediction rate limiter: its Lua token bucket on a real Redis, and what it does
when Redis does not answer."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from app.core.errors import TooManyRequestsError
from app.core.metrics import RATE_LIMIT_LOCAL_CHECKS
from app.services.rate_limit import KEY_PREFIX, REDIS_TIMEOUT_SECONDS, RedisRateLimiter
from tests.processes import free_port, start_redis_server, stop_process_group


def _with_limiters(
    url: str, *, rate: float, burst: int, count: int = 1
) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
    """Run `body(*limiters)` on `count` limiters with their own connections (as replicas
    have), closing them afterwards."""

    def run(body: Callable[..., Awaitable[Any]]) -> Any:
        async def main() -> Any:
            limiters = [
                RedisRateLimiter.from_url(url, rate_per_second=rate, burst=burst)
                for _ in range(count)
            ]
            try:
                return await body(*limiters)
            finally:
                for limiter in limiters:
                    await limiter.close()

        return asyncio.run(main())

    return run


async def _admitted(limiter: RedisRateLimiter, key: uuid.UUID) -> bool:
    try:
        await limiter.acquire(key)
    except TooManyRequestsError:
        return False
    return True


def _rewind(url: str, key: uuid.UUID, seconds: float) -> None:
    """Move the bucket's last update `seconds` into the past, as if that time had passed."""
    client = redis.Redis.from_url(url)
    name = f"{KEY_PREFIX}{key}"
    s, us = (int(v) for v in client.hmget(name, "s", "us"))  # type: ignore[union-attr]
    micros = s * 1_000_000 + us - round(seconds * 1_000_000)
    client.hset(name, mapping={"s": micros // 1_000_000, "us": micros % 1_000_000})


def _tokens(url: str, key: uuid.UUID) -> float:
    return float(redis.Redis.from_url(url).hget(f"{KEY_PREFIX}{key}", "tokens"))  # type: ignore[arg-type]


def test_replicas_take_from_one_bucket_and_429_names_the_wait(redis_url: str) -> None:
    key, other = uuid.uuid4(), uuid.uuid4()

    async def body(first: RedisRateLimiter, second: RedisRateLimiter) -> None:
        admitted = [await _admitted((first, second)[i % 2], key) for i in range(7)]
        assert admitted == [True] * 3 + [False] * 4
        with pytest.raises(TooManyRequestsError) as refused:
            await second.acquire(key)
        assert refused.value.headers == {"Retry-After": "2"}  # one token at 0.5/s
        assert await _admitted(first, other)  # another key has its own bucket

    _with_limiters(redis_url, rate=0.5, burst=3, count=2)(body)


def test_refill_is_the_elapsed_redis_time_times_the_rate_up_to_the_burst(redis_url: str) -> None:
    key = uuid.uuid4()
    run = _with_limiters(redis_url, rate=0.1, burst=3)

    async def drain(limiter: RedisRateLimiter) -> list[bool]:
        return [await _admitted(limiter, key) for _ in range(4)]

    assert run(drain) == [True, True, True, False]
    # the clock is the Redis server's (replicas with skewed clocks agree)
    server_seconds = redis.Redis.from_url(redis_url).time()[0]
    stored = int(redis.Redis.from_url(redis_url).hget(f"{KEY_PREFIX}{key}", "s"))  # type: ignore[arg-type]
    assert abs(stored - server_seconds) <= 1

    async def refused_wait(limiter: RedisRateLimiter) -> str:
        with pytest.raises(TooManyRequestsError) as refused:
            await limiter.acquire(key)
        return str(refused.value.headers["Retry-After"])  # type: ignore[index]

    _rewind(redis_url, key, 5)  # 5 s at 0.1/s: half a token, not enough
    assert run(refused_wait) == "5"  # the other half takes 5 s more
    assert 0.5 <= _tokens(redis_url, key) < 0.51
    _rewind(redis_url, key, 5)  # another half: one whole token
    assert run(drain) == [True, False, False, False]
    _rewind(redis_url, key, 3600)  # long idle: a full bucket, never more than the burst
    assert run(drain) == [True, True, True, False]


def test_a_bucket_expires_once_it_would_be_full_again(redis_url: str) -> None:
    key = uuid.uuid4()
    client = redis.Redis.from_url(redis_url)

    async def take(limiter: RedisRateLimiter, times: int = 1) -> None:
        for _ in range(times):
            await _admitted(limiter, key)

    _with_limiters(redis_url, rate=10, burst=5)(take)  # one token short: full in 100 ms
    assert 0 < client.pttl(f"{KEY_PREFIX}{key}") <= 100
    _with_limiters(redis_url, rate=0.5, burst=5)(lambda limiter: take(limiter, 5))
    assert 9_000 < client.pttl(f"{KEY_PREFIX}{key}") <= 10_000  # five tokens at 0.5/s


def test_concurrent_requests_on_many_connections_never_take_a_token_twice(
    redis_url: str,
) -> None:
    key = uuid.uuid4()

    async def body(*limiters: RedisRateLimiter) -> list[bool]:
        return await asyncio.gather(*(_admitted(limiters[i % 4], key) for i in range(60)))

    admitted = _with_limiters(redis_url, rate=0.001, burst=10, count=4)(body)
    assert admitted.count(True) == 10


def test_the_script_is_loaded_again_after_redis_forgot_it(redis_url: str) -> None:
    key = uuid.uuid4()

    async def body(limiter: RedisRateLimiter) -> list[bool]:
        first = await _admitted(limiter, key)
        redis.Redis.from_url(redis_url).script_flush()
        return [first] + [await _admitted(limiter, key) for _ in range(2)]

    assert _with_limiters(redis_url, rate=0.001, burst=2)(body) == [True, True, False]


def test_without_redis_each_process_applies_its_own_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = uuid.uuid4()
    before = RATE_LIMIT_LOCAL_CHECKS._value.get()
    unreachable = f"redis://127.0.0.1:{free_port()}/0"

    async def body(limiter: RedisRateLimiter) -> list[bool]:
        return [await _admitted(limiter, key) for _ in range(3)]

    with caplog.at_level(logging.WARNING, logger="app.services.rate_limit"):
        admitted = _with_limiters(unreachable, rate=0.001, burst=2)(body)
    assert admitted == [True, True, False]  # predictions go on, within this process's limit
    assert RATE_LIMIT_LOCAL_CHECKS._value.get() - before == 3
    # Redis was tried once, then left alone for REDIS_RETRY_SECONDS: one warning, not three
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis did not answer" in warnings[0]


def test_a_redis_that_does_not_answer_costs_one_timeout_per_interval() -> None:
    key = uuid.uuid4()
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)

        async def body(limiter: RedisRateLimiter) -> tuple[list[bool], float]:
            started = time.monotonic()
            admitted = [await _admitted(limiter, key) for _ in range(3)]
            return admitted, time.monotonic() - started

        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        admitted, seconds = _with_limiters(url, rate=0.001, burst=5)(body)
    assert admitted == [True] * 3
    assert REDIS_TIMEOUT_SECONDS <= seconds < 2 * REDIS_TIMEOUT_SECONDS  # the first one waited


def test_a_restarted_redis_is_used_again_at_once(tmp_path: Path) -> None:
    """A pooled connection that the restart closed is replaced within the same request."""
    key, port, log = uuid.uuid4(), free_port(), tmp_path / "redis.log"
    server = start_redis_server(port, log)

    async def body(limiter: RedisRateLimiter) -> tuple[list[bool], float]:
        nonlocal server
        assert await _admitted(limiter, key)
        stop_process_group(server)
        server = start_redis_server(port, log)  # empty: no bucket, no script
        before = RATE_LIMIT_LOCAL_CHECKS._value.get()
        admitted = [await _admitted(limiter, key) for _ in range(3)]
        return admitted, RATE_LIMIT_LOCAL_CHECKS._value.get() - before

    try:
        run = _with_limiters(f"redis://127.0.0.1:{port}/0", rate=0.001, burst=2)
        admitted, local_checks = run(body)
    finally:
        stop_process_group(server)
    assert local_checks == 0
    assert admitted == [True, True, False]  # the new server's bucket, full again

"""The training queue's depth, as /metrics reports it, on both brokers."""

from __future__ import annotations

from app.core.queue import RUN_TRAINING_JOB, queue_depth, send_task


def _depth_after_sends(count: int) -> tuple[int, int]:
    before = queue_depth("training")
    for index in range(count):
        send_task(RUN_TRAINING_JOB, args=[f"job-{index}"], queue="training")
    return before, queue_depth("training")


def test_queue_depth_on_redis(configure, redis_url: str, sqlite_url: str) -> None:
    configure(database_url=sqlite_url, broker_url=redis_url)
    assert _depth_after_sends(3) == (0, 3)


def test_queue_depth_on_the_embedded_broker(configure, sqlite_url: str, tmp_path) -> None:
    configure(database_url=sqlite_url, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    assert _depth_after_sends(2) == (0, 2)

from __future__ import annotations

import asyncio
import logging

from shared.logging import CorrelationFilter, correlated, correlation_id


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("t", logging.INFO, __file__, 1, "message", None, None)
    made.__dict__.update(extra)
    CorrelationFilter().filter(made)
    return made


def test_a_record_carries_the_current_correlation_id_only_inside_the_block() -> None:
    assert not hasattr(record(), "correlation_id")
    with correlated("abc"):
        assert record().correlation_id == "abc"  # type: ignore[attr-defined]
        assert record(correlation_id="explicit").correlation_id == "explicit"  # type: ignore[attr-defined]
    assert correlation_id() is None


async def test_tasks_started_inside_inherit_it_and_concurrent_blocks_do_not_mix() -> None:
    async def work(value: str) -> tuple[str | None, str | None]:
        with correlated(value):
            await asyncio.sleep(0)
            inner = await asyncio.create_task(asyncio.to_thread(correlation_id))
            return correlation_id(), inner

    assert list(await asyncio.gather(work("a"), work("b"))) == [("a", "a"), ("b", "b")]

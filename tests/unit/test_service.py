"""What every service process shares (shared/service.py): its loop and its collector."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from shared.service import GC_YOUNG_THRESHOLD, run_service, tune_garbage_collector


def test_a_service_runs_on_the_loop_it_asks_for() -> None:
    loops: list[type[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(type(asyncio.get_running_loop()))

    run_service(main(), on_uvloop=True)
    run_service(main(), on_uvloop=False)
    assert loops[0] is uvloop.Loop
    assert not issubclass(loops[1], uvloop.Loop)


def test_what_exists_at_start_up_is_frozen_out_of_collections() -> None:
    thresholds = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)

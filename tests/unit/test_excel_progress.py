"""Progress throttling: at most one update per interval, the first and the final always."""

from __future__ import annotations

from services.excel_worker.progress import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_one_update_per_interval() -> None:
    clock = FakeClock()
    throttle = Throttle(0.25, clock)
    passed = []
    for step in range(100):  # 100 updates over one second, every 10 ms
        clock.now = 100.0 + step * 0.01
        if throttle.ready():
            passed.append(round(clock.now - 100.0, 2))
    assert passed == [0.0, 0.25, 0.5, 0.75]


def test_the_final_update_always_passes() -> None:
    clock = FakeClock()
    throttle = Throttle(0.25, clock)
    assert throttle.ready()
    assert not throttle.ready()
    assert throttle.ready(final=True)
    clock.now += 0.1
    assert not throttle.ready()  # the final one counts as the last update

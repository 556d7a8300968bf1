"""The runs table on SQLite and PostgreSQL: limits, conditional finishes, stale sweeps."""

from __future__ import annotations


import pytest

from shared.db import create_schema, make_engine, session_factory
from shared.db.runs import Progress, RunExists, RunLimitReached, RunStatus, RunStore

def _exercise(url: str) -> None:
    engine = make_engine(url)
    try:
        create_schema(engine)
        store = RunStore(session_factory(engine))
        one = store.create("r1", "alice", "countdown", {"start": 3}, "rep-a", max_per_user=2, now=100)
        assert one.status is RunStatus.RUNNING and one.args == {"start": 3}
        with pytest.raises(RunExists):
            store.create("r1", "alice", "countdown", {}, "rep-b", max_per_user=2)
        store.create("r2", "alice", "primes", {}, "rep-b", max_per_user=2, now=100)
        with pytest.raises(RunLimitReached, match="limit is 2"):
            store.create("r3", "alice", "primes", {}, "rep-a", max_per_user=2)

        assert store.heartbeat("rep-a", [Progress("r1", 7, 70, ["a", "b"])], now=200) == []
        record = store.get("r1")
        assert record is not None and record.line_count == 7 and record.tail == ["a", "b"]

        finished = store.finish("r1", RunStatus.COMPLETED, exit_code=0, reason=None, now=250)
        assert finished is not None and finished.duration_s == 150
        assert store.finish("r1", RunStatus.FAILED, exit_code=None, reason="late") is None
        # A heartbeat for a run that ended elsewhere reports it lost.
        assert store.heartbeat("rep-a", [Progress("r1", 8, 80, [])]) == ["r1"]

        stale = store.fail_stale(150, "runner {replica} went quiet")
        assert [(r.id, r.reason) for r in stale] == [("r2", "runner rep-b went quiet")]
        assert store.fail_stale(150, "x") == []

        store.create("r4", "bob", "lines", {}, "rep-c", max_per_user=1)
        assert [r.id for r in store.fail_replica("rep-c", "restarted")] == ["r4"]
        assert [r.id for r in store.recent("alice", 10)] in (["r2", "r1"], ["r1", "r2"])
        assert store.recent("nobody", 10) == []
    finally:
        engine.dispose()


def test_runs_on_sqlite(database_url: str) -> None:
    _exercise(database_url)


@pytest.mark.postgres
def test_runs_on_postgresql(postgres_url: str) -> None:
    _exercise(postgres_url)

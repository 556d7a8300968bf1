"""The runs table on SQLite and PostgreSQL: limits, conditional finishes, stale sweeps."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy.exc import StatementError

from shared.db import create_schema, make_engine, session_factory
from shared.db.runs import Progress, RunExists, RunLimitReached, RunStatus, RunStore


def at(seconds: float) -> datetime:
    """A moment as Unix seconds: the store reads every time back timezone-aware UTC."""
    return datetime.fromtimestamp(seconds, timezone.utc)


def _exercise(url: str) -> None:
    engine = make_engine(url)
    try:
        create_schema(engine)
        store = RunStore(session_factory(engine))
        one = store.create("r1", "alice", "countdown", {"start": 3}, max_per_user=2, now=at(100))
        assert one.status is RunStatus.QUEUED and one.args == {"start": 3}
        assert one.replica is None and one.started_at is None and one.duration_s == 0
        with pytest.raises(RunExists):
            store.create("r1", "alice", "countdown", {}, max_per_user=2)
        store.create("r2", "alice", "primes", {}, max_per_user=2, now=at(100))
        # Queued runs count against the per-user limit as running ones do.
        with pytest.raises(RunLimitReached, match="limit is 2"):
            store.create("r3", "alice", "primes", {}, max_per_user=2)

        claimed = store.claim("r1", "rep-a", now=at(110))
        assert claimed is not None and claimed.status is RunStatus.RUNNING
        assert claimed.replica == "rep-a" and claimed.started_at == at(110)
        assert store.claim("r1", "rep-b") is None  # one replica only
        assert store.claim("r2", "rep-b", now=at(100)) is not None

        assert store.heartbeat("rep-a", [Progress("r1", 7, 70, ["a", "b"])], now=at(200)) == []
        record = store.get("r1")
        assert record is not None and record.line_count == 7 and record.tail == ["a", "b"]

        finished = store.finish("r1", RunStatus.COMPLETED, exit_code=0, reason=None, now=at(250))
        assert finished is not None and finished.duration_s == 140
        assert store.finish("r1", RunStatus.FAILED, exit_code=None, reason="late") is None
        # A heartbeat for a run that ended elsewhere reports it lost.
        assert store.heartbeat("rep-a", [Progress("r1", 8, 80, [])]) == ["r1"]

        stale = store.fail_stale(at(150), "runner {replica} went quiet")
        assert [(r.id, r.reason) for r in stale] == [("r2", "runner rep-b went quiet")]
        assert store.fail_stale(at(150), "x") == []

        store.create("r4", "bob", "lines", {}, max_per_user=2)
        store.claim("r4", "rep-c")
        assert [r.id for r in store.fail_replica("rep-c", "restarted")] == ["r4"]
        assert [r.id for r in store.recent("alice", 10)] in (["r2", "r1"], ["r1", "r2"])
        assert store.recent("nobody", 10) == []

        # Queued runs: stopped before a replica claims them, or expired in the queue.
        store.create("q1", "carol", "lines", {}, max_per_user=3, now=at(300))
        store.create("q2", "carol", "lines", {}, max_per_user=3, now=at(400))
        stopped = store.finish("q1", RunStatus.STOPPED, exit_code=None, reason="stopped by carol",
                               was=RunStatus.QUEUED)
        assert stopped is not None and stopped.duration_s == 0
        assert store.claim("q1", "rep-a") is None
        assert store.finish("q2", RunStatus.STOPPED, exit_code=None, reason="x") is None
        expired = store.expire_queued(at(500), "waited too long")
        assert [(r.id, r.status, r.reason) for r in expired] == [
            ("q2", RunStatus.TIMEOUT, "waited too long")]
        assert store.expire_queued(at(500), "again") == []

        # The activity report's view: oldest first, filtered on the time a run was accepted.
        assert [r.id for r in store.activity("carol", limit=10)] == ["q1", "q2"]
        assert [r.id for r in store.activity("carol", limit=1)] == ["q1"]
        assert [r.id for r in store.activity("carol", since=at(350), limit=10)] == ["q2"]
        assert [r.id for r in store.activity("carol", until=at(350), limit=10)] == ["q1"]
        assert [r.id for r in store.activity("carol", statuses=["timeout"], limit=10)] == ["q2"]
        assert store.activity("carol", since=at(400), limit=10)[0].created_at == at(400)
        # A time without a zone is refused rather than guessed.
        with pytest.raises(StatementError, match="naive"):
            store.create("n1", "dave", "lines", {}, max_per_user=1, now=datetime(2024, 1, 1))
    finally:
        engine.dispose()


def test_runs_on_sqlite(database_url: str) -> None:
    _exercise(database_url)


@pytest.mark.postgres
def test_runs_on_postgresql(postgres_url: str) -> None:
    _exercise(postgres_url)

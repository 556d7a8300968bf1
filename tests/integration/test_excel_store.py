"""The export task and notification tables on SQLite and PostgreSQL: claims, one finish."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from shared.db import create_schema, make_engine, session_factory
from shared.db.exports import ExportStatus, ExportStore
from shared.db.models import utcnow
from shared.db.notifications import NotificationStore, make_notification


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, database_url: str) -> str:
    """The test's SQLite file, or a throw-away PostgreSQL database (conftest's postgres_url)."""
    if request.param == "sqlite":
        return database_url
    return str(request.getfixturevalue("postgres_url"))


def test_claim_finish_fail_expire(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    try:
        create_schema(engine)
        sessions = session_factory(engine)
        store, notes = ExportStore(sessions), NotificationStore(sessions)

        queued = store.create("t1", "alice", "sample", {"rows": 5})
        assert (queued.status, queued.attempts) == (ExportStatus.QUEUED, 0)
        assert store.create("t1", "mallory", "table", {}).owner == "alice"  # kept, not replaced
        claimed = store.claim("t1", "alice", "sample", {"rows": 5})
        assert (claimed.status, claimed.attempts) == (ExportStatus.RUNNING, 1)
        assert store.claim("t1", "alice", "sample", {"rows": 5}).attempts == 2
        assert store.claim("t1", "bob", "sample", {}).owner == "alice"  # not bob's to claim

        part, final = tmp_path / ".t1.part", tmp_path / "t1.xlsx"
        part.write_bytes(b"xlsx")
        moved: list[str] = []

        def store_file() -> None:
            moved.append("x")
            part.rename(final)

        note = make_notification("t1-done", "alice", "excel.done", b'{"v": 1}')
        assert store.finish("t1", file_name="t1.xlsx", download_name="d.xlsx", size=4, rows=5,
                            notification=note, store_file=store_file)
        again = make_notification("t1-done", "alice", "excel.done", b'{"v": 1}')
        assert not store.finish("t1", file_name="t1.xlsx", download_name="d.xlsx", size=4, rows=5,
                                notification=again, store_file=lambda: moved.append("y"))
        assert moved == ["x"] and final.read_bytes() == b"xlsx"
        done = store.claim("t1", "alice", "sample", {})
        assert (done.status, done.attempts, done.rows) == (ExportStatus.DONE, 2, 5)
        assert not store.fail("t1", "late", "too late", make_notification("t1-failed", "alice", "x", b"{}"))

        assert [n.id for n in notes.pending(["alice"])["alice"]] == ["t1-done"]
        assert notes.mark_delivered(["t1-done"]) == 1
        assert notes.mark_delivered(["t1-done"]) == 0
        assert notes.pending(["alice"]) == {}

        store.claim("t2", "alice", "table", {"columns": []})
        assert store.fail("t2", "build_failed", "disk full",
                          make_notification("t2-failed", "alice", "excel.failed", b"{}"))
        assert store.get("t2").error_code == "build_failed"  # type: ignore[union-attr]

        assert store.expirable(utcnow() - timedelta(hours=1)) == []
        assert [r.id for r in store.expirable(utcnow() + timedelta(seconds=1))] == ["t1"]
        assert store.mark_expired("t1") and not store.mark_expired("t1")
        expired = store.get("t1")
        assert expired is not None and expired.status is ExportStatus.EXPIRED and expired.expired_at
        assert [r.id for r in store.activity("alice", statuses=["failed"], limit=10)] == ["t2"]
        assert [r.id for r in store.activity("alice", since=utcnow() + timedelta(days=1), limit=10)] == []
        assert store.count_by_status() == {"expired": 1, "failed": 1}
        assert [r.id for r in store.list_for("alice")] == ["t2", "t1"]
    finally:
        engine.dispose()

"""The schema's migrations: on SQLite and on PostgreSQL, fresh, concurrent, and from a
database of the first release that had none."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

from shared.db import UserStore, create_schema, make_engine, session_factory
from shared.db.models import Base
from shared.db.schema import current_revision, head_revision


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'warren.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = make_engine(url)
    request.addfinalizer(made.dispose)
    return made


def differences(engine: Engine) -> list[object]:
    """What Alembic's autogenerate would still change to match the models: nothing, if the
    migrations make exactly the models' schema."""
    with engine.connect() as connection:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_a_fresh_database_gets_the_models_schema_at_the_newest_revision(engine: Engine) -> None:
    create_schema(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    create_schema(engine)  # again, as every later start does: nothing to do
    assert current_revision(engine) == head_revision()


def test_replicas_starting_together_migrate_once(engine: Engine) -> None:
    engines = [make_engine(engine.url.render_as_string(hide_password=False)) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(engines)) as pool:
            list(pool.map(create_schema, engines))  # raises what any of them raised
    finally:
        for made in engines:
            made.dispose()
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert differences(engine) == []


def test_a_database_of_the_first_release_is_adopted_with_its_data(engine: Engine) -> None:
    Base.metadata.create_all(engine)  # how the first release made its tables
    UserStore(session_factory(engine)).add("alice", "pw-alice-123", groups=("team",))
    assert "alembic_version" not in inspect(engine).get_table_names()

    create_schema(engine)
    assert current_revision(engine) == head_revision()
    assert differences(engine) == []
    user = UserStore(session_factory(engine)).authenticate("alice", "pw-alice-123")
    assert user is not None and user.groups == ("team",)

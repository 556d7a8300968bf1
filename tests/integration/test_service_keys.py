"""Service API keys in a real database (SQLite, and PostgreSQL when present), and the
``warren key`` commands that manage them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, select

from services import cli
from shared.db import create_schema, make_engine, session_factory
from shared.db.keys import KeyStore, KeyStoreError, Scope, ServiceKey, parse_key


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'warren.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = make_engine(url)
    create_schema(made)
    request.addfinalizer(made.dispose)
    return made


def test_a_key_is_stored_as_a_digest_and_matches_only_its_own_secret(engine: Engine) -> None:
    store = KeyStore(session_factory(engine))
    record, text = store.add("billing", [Scope.PUBLISH])
    parsed = parse_key(text)
    assert parsed is not None and parsed[0] == record.id
    secret = parsed[1]
    with engine.connect() as connection:
        [stored] = connection.execute(select(ServiceKey.secret_hash)).scalars()
    assert secret not in stored and len(stored) == 64
    found = store.get(record.id)
    other = secret[:-1] + ("B" if secret.endswith("A") else "A")  # one character off
    assert found is not None and found.matches(secret) and not found.matches(other)
    assert (found.name, found.scopes, found.revoked) == ("billing", frozenset({"publish"}), False)
    assert store.get("0123456789abcdef") is None


def test_keys_are_revoked_by_id_or_every_live_one_of_a_name(engine: Engine) -> None:
    store = KeyStore(session_factory(engine))
    old, _ = store.add("billing", [Scope.PUBLISH])
    new, _ = store.add("billing", [Scope.PUBLISH])  # a second key: rotation
    other, _ = store.add("crm", [Scope.PUBLISH])
    assert [r.id for r in store.revoke(old.id)] == [old.id]
    assert [r.id for r in store.revoke("billing")] == [new.id]
    with pytest.raises(KeyStoreError, match="no live key"):
        store.revoke("billing")
    states = {r.id: r.revoked for r in store.all()}
    assert states == {old.id: True, new.id: True, other.id: False}


@pytest.mark.parametrize(
    ("name", "scopes", "message"),
    [("bad name", ["publish"], "key name"), ("ok", ["root"], "unknown scope"), ("ok", [], "at least")],
)
def test_a_key_with_a_bad_name_or_scope_is_refused(
    engine: Engine, name: str, scopes: list[str], message: str
) -> None:
    with pytest.raises(KeyStoreError, match=message):
        KeyStore(session_factory(engine)).add(name, scopes)


def test_warren_key_add_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"WARREN_ENV": "development", "WARREN_DATABASE_URL": f"sqlite:///{tmp_path / 'k.db'}"}
    cli.main(["key", "add", "billing", "--scope", "publish"], env=env)
    out, err = capsys.readouterr()
    text = out.strip()
    parsed = parse_key(text)
    assert parsed is not None and "shown only this once" in err
    cli.main(["key", "list"], env=env)
    [listed] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (listed["id"], listed["name"], listed["scopes"], listed["revoked_at"]) == (
        parsed[0], "billing", ["publish"], None
    )
    assert text not in orjson.dumps(listed).decode() and parsed[1] not in str(listed)
    cli.main(["key", "revoke", "billing"], env=env)
    [revoked] = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert revoked["id"] == parsed[0] and revoked["revoked_at"]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["key", "revoke", "billing"], env=env)
    assert exit_.value.code == 2
    assert "no live key" in capsys.readouterr().err

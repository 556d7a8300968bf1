"""The edge's check of service keys, and the events of a publish body: pure logic."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, cast

import pytest

from shared.db.keys import KeyRecord, KeyStore, digest
from shared.messaging import Address
from services.ws_edge.publishing import EventError, make_event
from services.ws_edge.service_keys import KeyForbidden, KeyRefused, ServiceKeys

SECRET = "s" * 43
KEY_ID = "0123456789abcdef"
PRESENTED = f"wk_{KEY_ID}_{SECRET}"


class FakeStore:
    def __init__(self, scopes: frozenset[str] = frozenset({"publish"})) -> None:
        self.record = KeyRecord(KEY_ID, "billing", scopes, digest(SECRET),
                                datetime.now(timezone.utc), None)
        self.reads = 0

    def get(self, key_id: str) -> KeyRecord | None:
        self.reads += 1
        return self.record if key_id == KEY_ID else None


def keys_over(store: FakeStore, remember_s: float = 10.0) -> ServiceKeys:
    return ServiceKeys(cast(KeyStore, store), ThreadPoolExecutor(1), remember_s)


async def test_requests_arriving_together_share_one_lookup_and_then_none() -> None:
    store = FakeStore()
    keys = keys_over(store)
    records = await asyncio.gather(*(keys.verify(PRESENTED, "publish") for _ in range(20)))
    assert {r.name for r in records} == {"billing"} and store.reads == 1
    await keys.verify(PRESENTED, "publish")
    assert store.reads == 1


async def test_a_key_without_the_scope_is_forbidden_and_a_wrong_secret_refused() -> None:
    keys = keys_over(FakeStore(scopes=frozenset({"other"})))
    with pytest.raises(KeyForbidden) as forbidden:
        await keys.verify(PRESENTED, "publish")
    assert forbidden.value.code == "scope_missing"
    with pytest.raises(KeyRefused) as refused:
        await keys.verify(f"wk_{KEY_ID}_{'t' * 43}", "publish")
    assert refused.value.code == "key_invalid"


async def test_a_key_is_read_again_once_the_bound_has_passed() -> None:
    store = FakeStore()
    keys = keys_over(store, remember_s=5.0)
    now = 100.0
    keys.clock = lambda: now
    await keys.verify(PRESENTED, "publish")
    now = 104.9
    await keys.verify(PRESENTED, "publish")
    assert store.reads == 1
    now = 105.0
    await keys.verify(PRESENTED, "publish")
    assert store.reads == 2


@pytest.mark.parametrize(
    ("event", "field"),
    [({"to": "user:a", "type": "x", "data": {"s": "x" * 100}}, "data"),
     ({"to": "user:a", "type": "x", "id": "é"}, "id")],
)
def test_make_event_names_the_field(event: dict[str, Any], field: str) -> None:
    with pytest.raises(EventError) as refused:
        make_event(event, Address.service("billing"), max_data_bytes=64)
    assert refused.value.field == field


def test_make_event_sets_from_to_the_service_and_refuses_another_sender() -> None:
    billing = Address.service("billing")
    envelope = make_event({"to": "user:a", "type": "x", "from": "service:billing"}, billing,
                          max_data_bytes=64)
    assert str(envelope.sender) == "service:billing" and envelope.data == {}
    with pytest.raises(EventError) as forged:
        make_event({"to": "user:a", "type": "x", "from": "user:b"}, billing, max_data_bytes=64)
    assert (forged.value.code, forged.value.field) == ("forged_sender", "from")

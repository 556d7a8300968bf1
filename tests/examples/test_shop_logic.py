"""The example application's own logic, in this process: its job's count and Stop, its
store, its report's rows and its settings. test_shop.py runs the same code under Warren."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from warren_example_shop import settings as shop_settings_module
from warren_example_shop.report import ORDERS
from warren_example_shop.settings import SettingsError, ShopSettings
from warren_example_shop.store import add_order, connect, init, iter_orders
from warren_example_shop.words import WORD_COUNT

from warren import ArgsError, JobContext, ReportContext


class StopAfter(threading.Event):
    """A stop event that Stop sets once the job has asked ``checks`` times."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        if self.left < 0:
            self.set()
        return super().is_set()


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "shop.db"
    monkeypatch.setenv("SHOP_DATABASE", str(path))
    shop_settings_module.shop_settings.cache_clear()
    init(path)
    yield path
    shop_settings_module.shop_settings.cache_clear()


def test_the_job_counts_words_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("a b a\nc a\n")
    WORD_COUNT.run({"file": text, "every": 1, "top": 2}, JobContext(threading.Event()))
    assert capsys.readouterr().out.splitlines() == [
        "1 lines, 3 words", "2 lines, 5 words", "done: 2 lines, 5 words, 3 different",
        "       3 a", "       1 b",
    ]


def test_the_job_stops_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "t.txt"
    text.write_text("one two\n" * 10)
    WORD_COUNT.run({"file": text, "every": 100, "top": 5}, JobContext(StopAfter(3)))
    assert capsys.readouterr().out.splitlines() == ["stopped after 3 lines, 6 words"]


def test_the_seed_is_written_once_and_orders_are_added(database: Path) -> None:
    assert init(database) == 0  # already seeded by the fixture
    order = add_order(database, "carol", "pen", 4)
    assert (order.customer, order.amount) == ("carol", Decimal("4.8"))
    with pytest.raises(KeyError):
        add_order(database, "carol", "yacht", 1)
    with connect(database) as connection:
        assert [o.id for o in iter_orders(connection, None)] == [1, 2, 3, order.id]
        assert [o.item for o in iter_orders(connection, "carol")] == ["pen"]


def test_a_command_handled_twice_places_one_order(database: Path) -> None:
    first = add_order(database, "carol", "mug", 1, command_id="cmd-1")
    again = add_order(database, "carol", "mug", 1, command_id="cmd-1")
    other = add_order(database, "carol", "mug", 1, command_id="cmd-2")
    assert again == first and other.id != first.id
    with connect(database) as connection:
        assert [o.id for o in iter_orders(connection, "carol")] == [first.id, other.id]


def test_the_report_streams_the_shops_rows(database: Path) -> None:
    table = ORDERS.build(ORDERS.validate({"customer": "bob"}), ReportContext("bob", "t1"))
    assert table.total == 1
    assert [c.name for c in table.columns] == [
        "id", "customer", "item", "quantity", "amount", "placed"
    ]
    assert list(table.rows) == [(2, "bob", "mug", 1, Decimal(8), "2024-02-11")]
    with pytest.raises(ArgsError, match="customer"):
        ORDERS.validate({"customer": 42})


def test_the_database_setting_is_required() -> None:
    with pytest.raises(SettingsError, match="SHOP_DATABASE"):
        ShopSettings.from_env({})

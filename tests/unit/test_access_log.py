"""How loud each finished request is in the access log (shared/web.py)."""

from __future__ import annotations

import logging
from typing import cast

import pytest
import tornado.web

from shared.web import ReadyHandler, access_log_level


class Finished:
    """The parts of a finished handler the access log reads."""

    def __init__(self, status: int, *, quiet: bool = False, probe: bool = False) -> None:
        self._status = status
        self.quiet_access_log = quiet
        self.expected_unavailable = probe

    def get_status(self) -> int:
        return self._status


def level(status: int, **kind: bool) -> int:
    return access_log_level(cast(tornado.web.RequestHandler, Finished(status, **kind)))


@pytest.mark.parametrize(("status", "kind", "expected"), [
    (200, {}, logging.INFO),
    (200, {"quiet": True}, logging.DEBUG),
    (101, {"quiet": True}, logging.DEBUG),
    (404, {}, logging.WARNING),
    (404, {"quiet": True}, logging.WARNING),
    (500, {}, logging.ERROR),
    (502, {"probe": True}, logging.ERROR),
    # "Not now, retry later": the broker or the database away, said on purpose.
    (503, {}, logging.WARNING),
    # A readiness probe answering "not ready" while the broker is away.
    (503, {"probe": True}, logging.INFO),
])
def test_levels(status: int, kind: dict[str, bool], expected: int) -> None:
    assert level(status, **kind) == expected


def test_the_readiness_probe_expects_to_answer_503() -> None:
    assert ReadyHandler.expected_unavailable is True

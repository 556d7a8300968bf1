"""An uncaught error in a handler is logged without the request's query string, which
may carry a token (shared/web.py, log_uncaught)."""

from __future__ import annotations

import logging

import pytest
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from shared.web import JsonHandler, log_request

SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2ln"


class Broken(JsonHandler):
    def get(self) -> None:
        raise RuntimeError("a bug")


async def test_a_handler_that_raises_logs_its_path_and_not_its_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sockets = bind_sockets(0, "127.0.0.1")
    app = tornado.web.Application([(r"/broken", Broken)], log_function=log_request)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        with caplog.at_level(logging.INFO), pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/broken?token={SECRET}")
        assert refused.value.code == 500
    finally:
        server.stop()
    uncaught = [r for r in caplog.records if r.getMessage() == "uncaught exception"]
    assert [(r.levelno, getattr(r, "path", None)) for r in uncaught] == [(logging.ERROR, "/broken")]
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert SECRET not in text, text

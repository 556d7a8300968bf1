"""Edges for tests: in-process on a free port, or as a separate OS process."""

from __future__ import annotations

from tests.support.service_process import ServiceProcess


def edge_env(amqp_url: str, database_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "WARREN_ENV": "development",
        "WARREN_AMQP_URL": amqp_url,
        "WARREN_DATABASE_URL": database_url,
        "WARREN_EDGE_HOST": "127.0.0.1",
        "WARREN_EDGE_PORT": "0",
        "WARREN_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


class EdgeProcess(ServiceProcess):
    """``python -m services.ws_edge`` in a child process (tests/support/service_process.py)."""

    module = "services.ws_edge"
    ready_message = "edge ready"

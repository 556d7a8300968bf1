"""Warren's public Python API: what an application imports to extend Warren.

Everything under ``shared`` and ``services`` is internal and may change; what this
package exports is the contract, documented in docs/extending.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from warren.jobs import ArgsError, Job, JobContext, Param
from warren.reports import Column, ColumnType, Report, ReportContext, Table

if TYPE_CHECKING:
    from warren.client import Client, Event, WarrenClient, WarrenError
    from warren.http import AsyncWarrenPublisher, PublishError, WarrenPublisher
    from warren.service import CommandContext, CommandError, Service

#: The HTTP publishing client (warren/http.py) loads httpx, which a job's process does not
#: need: its names are imported on first use.
_HTTP_NAMES = frozenset({"AsyncWarrenPublisher", "PublishError", "WarrenPublisher"})
#: Likewise the WebSocket client (warren/client.py), which loads websockets.
_CLIENT_NAMES = frozenset({"Client", "Event", "WarrenClient", "WarrenError"})
#: Likewise the service API (warren/service.py), which loads the broker client.
_SERVICE_NAMES = frozenset({"CommandContext", "CommandError", "Service"})


def __getattr__(name: str) -> object:
    if name in _HTTP_NAMES:
        from warren import http

        return getattr(http, name)
    if name in _CLIENT_NAMES:
        from warren import client

        return getattr(client, name)
    if name in _SERVICE_NAMES:
        from warren import service

        return getattr(service, name)
    raise AttributeError(f"module 'warren' has no attribute {name!r}")


__all__ = [
    "AsyncWarrenPublisher", "PublishError", "WarrenPublisher",
    "Client", "Event", "WarrenClient", "WarrenError",
    "CommandContext", "CommandError", "Service",
    "ArgsError", "Column", "ColumnType", "Job", "JobContext", "Param", "Report", "ReportContext",
    "Table",
]

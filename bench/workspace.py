"""A scratch directory and a fresh RabbitMQ vhost for one bench run."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from bench.servers import raise_file_limit
from tests.support.rabbit import BrokerAdmin


@dataclass(frozen=True, slots=True)
class Workspace:
    workdir: Path
    vhost: str
    amqp_url: str  # the vhost's

    @property
    def logs(self) -> Path:
        """Where the run's processes log; kept after the run if asked for."""
        return self.workdir / "logs"


@contextlib.asynccontextmanager
async def workspace(amqp_url: str, api_url: str, prefix: str,
                    keep_logs: Path | None) -> AsyncIterator[Workspace]:
    """Raise the file limit, then make a scratch directory and a vhost. On the way out
    the vhost is deleted and the logs are copied to ``keep_logs``, if given, before the
    directory goes."""
    raise_file_limit()
    admin = BrokerAdmin(amqp_url, api_url)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        vhost = await asyncio.to_thread(admin.create_vhost, "warren-bench")
        space = Workspace(workdir, vhost, admin.vhost_url(vhost))
        try:
            yield space
        finally:
            await asyncio.to_thread(admin.delete_vhost, vhost)
            if keep_logs is not None and space.logs.is_dir():
                shutil.copytree(space.logs, keep_logs, dirs_exist_ok=True)

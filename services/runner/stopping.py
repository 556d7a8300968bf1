"""``run.stop``: checked by whichever replica consumes it, carried out by the run's owner.

Any replica consumes ``warren.cmd.run.stop``, looks the run up in the database and
checks that the requester is its owner or holds the admin role (roles come from the
users table: a command carries only the user id). A run still queued is ended right
there. If the run executes elsewhere, the command is forwarded to that replica's
control queue. A replica whose control queue stays missing for ``owner_probe_s`` is
gone: the run is marked failed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from aio_pika.abc import AbstractIncomingMessage

from shared.db.runs import RunStatus
from shared.messaging import ADDRESS_BROADCAST, Envelope
from shared.messaging.broker import Unroutable
from shared.messaging.names import Command
from services.runner import events
from services.runner.control import ControlLink
from services.runner.manager import RunManager
from services.runner.requests import Refused, parse_stop

log = logging.getLogger(__name__)

PING: Final = "runner.ping"


class StopService:
    def __init__(self, manager: RunManager) -> None:
        self._manager = manager
        self.control: ControlLink | None = None

    async def handle_command(self, envelope: Envelope, _message: AbstractIncomingMessage) -> None:
        manager = self._manager
        try:
            run_id = parse_stop(envelope.data)
        except Refused as exc:
            await manager.refuse(envelope, exc)
            return
        requester = envelope.sender.name
        record = await manager.db(manager.store.get, run_id)
        if record is None:
            await manager.refuse(envelope, Refused("unknown_run", f"no run {run_id!r}"), run_id)
            return
        if record.owner != requester and not await manager.is_admin(requester):
            await manager.refuse(envelope, Refused(
                "forbidden", f"only the owner of run {run_id} or an admin may stop it"), run_id)
            return
        if record.status is RunStatus.QUEUED:
            if await manager.stop_queued(run_id, requester, envelope.ts):
                return
            # A replica claimed it meanwhile.
            record = await manager.db(manager.store.get, run_id)
            assert record is not None
        if record.status is not RunStatus.RUNNING:
            await manager.refuse(envelope, Refused(
                "run_finished", f"run {run_id} already finished: {record.status.value}"), run_id)
            return
        assert record.replica is not None
        if record.replica == manager.replica:
            await self._stop_here(envelope, run_id)
            return
        forward = Envelope(
            type=Command.RUN_STOP.value, to=envelope.sender, sender=envelope.sender,
            data={"run_id": run_id}, id=envelope.id, ts=envelope.ts,
        )
        if await self._deliver(record.replica, forward):
            manager.metrics.forwarded.inc()
        else:
            await manager.fail(run_id, f"runner {record.replica} died")

    async def handle_control(self, envelope: Envelope) -> None:
        if envelope.type == PING:
            return
        if envelope.type != Command.RUN_STOP.value:
            log.warning("unknown control message", extra={"type": envelope.type})
            return
        try:
            run_id = parse_stop(envelope.data)
        except Refused as exc:
            await self._manager.refuse(envelope, exc)
            return
        await self._stop_here(envelope, run_id)

    async def _stop_here(self, envelope: Envelope, run_id: str) -> None:
        if not self._manager.stop_local(run_id, envelope.sender.name, envelope.ts):
            await self._manager.refuse(
                envelope, Refused("run_finished", f"run {run_id} already finished"), run_id
            )

    async def owner_alive(self, replica: str) -> bool:
        """Whether ``replica`` is connected: it takes a ping in its control queue."""
        ping = Envelope(type=PING, to=ADDRESS_BROADCAST, sender=events.SENDER, data={})
        return await self._deliver(replica, ping)

    async def _deliver(self, replica: str, envelope: Envelope) -> bool:
        """Put ``envelope`` in ``replica``'s control queue, trying twice ``owner_probe_s`` apart.

        A replica whose broker connection dropped for a moment loses its exclusive queue
        until it reconnects (about a second); one that died never gets it back.
        """
        assert self.control is not None
        for attempt in range(2):
            try:
                await self.control.forward(replica, envelope)
                return True
            except Unroutable:
                if attempt == 0:
                    await asyncio.sleep(self._manager.settings.owner_probe_s)
        return False

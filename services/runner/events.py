"""The events the runner publishes to a run's owner (and errors to a command's sender)."""

from __future__ import annotations

from typing import Any, Final

from shared.db.runs import RunRecord
from shared.messaging import Address, Envelope
from shared.messaging.names import Event

SENDER: Final = Address.service("runner")


def queued(record: RunRecord) -> Envelope:
    return Envelope(
        type=Event.RUN_QUEUED.value,
        to=Address.user(record.owner),
        sender=SENDER,
        data={"run_id": record.id, "job": record.job, "args": record.args},
    )


def started(record: RunRecord) -> Envelope:
    return Envelope(
        type=Event.RUN_STARTED.value,
        to=Address.user(record.owner),
        sender=SENDER,
        data={"run_id": record.id, "job": record.job, "args": record.args,
              "replica": record.replica},
    )


def output(owner: str, run_id: str, seq: int, stream: str, lines: list[str]) -> Envelope:
    return Envelope(
        type=Event.RUN_OUTPUT.value,
        to=Address.user(owner),
        sender=SENDER,
        data={"run_id": run_id, "seq": seq, "stream": stream, "lines": lines},
    )


def finished(record: RunRecord) -> Envelope:
    data: dict[str, Any] = {
        "run_id": record.id,
        "status": record.status.value,
        "exit_code": record.exit_code,
        "duration_s": round(record.duration_s, 3),
        "lines": record.line_count,
        "reason": record.reason,
    }
    return Envelope(
        type=Event.RUN_FINISHED.value, to=Address.user(record.owner), sender=SENDER, data=data
    )


def error(to: Address, command: str, command_id: str, code: str, message: str,
          run_id: str | None = None) -> Envelope:
    return Envelope(
        type=Event.RUN_ERROR.value,
        to=to,
        sender=SENDER,
        data={"command": command, "command_id": command_id, "run_id": run_id,
              "code": code, "message": message},
    )

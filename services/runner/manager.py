"""The runs of one replica: accepting them, executing them, and recording how they end.

A ``run.start`` is accepted (checked, recorded as queued, put into the runs queue) by
whichever replica consumes it. A run's delivery from the runs queue stays
unacknowledged while the run executes, so that queue's prefetch is this replica's
concurrency limit, and a replica that dies gives its deliveries back to the broker.
The database, not the broker, says where a run is: every transition is a conditional
update, and only the replica whose update wins publishes the event.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aio_pika.abc import AbstractIncomingMessage

from shared.db.models import utcnow
from shared.db.outage import while_unavailable
from shared.db.runs import RunExists, RunLimitReached, RunRecord, RunStatus, RunStore
from shared.db.users import UserStore
from shared.messaging import Envelope
from shared.messaging.broker import Publisher
from shared.messaging.names import Command
from services.runner import events
from services.runner.dispatch import RunQueue
from services.runner.metrics import RunnerMetrics
from services.runner.output import Batch
from services.runner.process import ChildRun, Limits, Outcome
from services.runner.registry import JobRegistry
from services.runner.requests import Refused, check_roles, parse_start
from services.runner.settings import RunnerSettings
from warren.jobs import Job

log = logging.getLogger(__name__)

T = TypeVar("T")
REPO_ROOT = str(Path(__file__).resolve().parents[2])
EVENT_RETRY_S = 10.0
END_RETRY_S = 300.0  # a run's end is written again while the database is away, this long


@dataclass(eq=False)
class ActiveRun:
    record: RunRecord
    child: ChildRun
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stop_ts: float | None = None  # the run.stop command's timestamp, for the latency metric


class RunManager:
    def __init__(
        self,
        settings: RunnerSettings,
        jobs: JobRegistry,
        store: RunStore,
        users: UserStore,
        publisher: Publisher,
        queue: RunQueue,
        metrics: RunnerMetrics,
        executor: Executor,
    ) -> None:
        self.settings = settings
        self.replica = settings.common.instance_id
        self._jobs = jobs
        self._import_paths = jobs.import_paths()
        self._store = store
        self._users = users
        self._publisher = publisher
        self._queue = queue
        self._metrics = metrics
        self._executor = executor
        self._active: dict[str, ActiveRun] = {}
        self._draining = False
        self._limits = Limits(
            max_wall_s=settings.max_wall_s,
            max_line_chars=settings.max_line_chars,
            max_output_bytes=settings.max_output_bytes,
            stop_grace_s=settings.stop_grace_s,
            kill_grace_s=settings.kill_grace_s,
            tail_lines=settings.tail_lines,
            batch_lines=settings.batch_lines,
            batch_bytes=settings.batch_bytes,
            batch_interval_s=settings.batch_interval_s,
        )
        # Set by the server once the control link exists: whether a replica is connected.
        self.owner_alive: Callable[[str], Awaitable[bool]] = self._assume_alive

    @property
    def metrics(self) -> RunnerMetrics:
        return self._metrics

    @property
    def store(self) -> RunStore:
        return self._store

    @property
    def active(self) -> Mapping[str, ActiveRun]:
        return self._active

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    # -- run.start: accepting -------------------------------------------------------

    async def handle_start(self, envelope: Envelope, _message: AbstractIncomingMessage) -> None:
        """Check a ``run.start``, record the run as queued and put it in the runs queue.

        Also while the replica shuts down: accepting is quick, and the run waits in the
        queue for another replica.
        """
        try:
            request = parse_start(
                envelope.data, self._jobs, max_args_bytes=self.settings.max_args_bytes,
                http_configured=bool(self.settings.http_job_url),
                files_dir=self.settings.files_dir,
            )
            if request.job.roles is not None:
                user = await self.db(self._users.get, envelope.sender.name)
                check_roles(request.job, user.roles if user is not None else (),
                            self.settings.admin_role)
        except Refused as exc:
            await self.refuse(envelope, exc)
            return
        try:
            record = await self.db(
                self._store.create, envelope.id, envelope.sender.name, request.job.name,
                request.args, max_per_user=self.settings.max_per_user,
            )
        except RunExists as exc:
            # A redelivered start: it was accepted before, perhaps not queued yet. A second
            # copy in the runs queue is harmless, since only one replica can claim the run.
            if exc.record.status is not RunStatus.QUEUED:
                return
        except RunLimitReached as exc:
            await self.refuse(envelope, Refused("too_many_runs", str(exc)))
            return
        else:
            self._metrics.queued.inc()
            await self.publish(events.queued(record))
        await self._queue.put(envelope)

    async def refuse(self, envelope: Envelope, exc: Refused, run_id: str | None = None) -> None:
        self._metrics.refused.labels(exc.code).inc()
        log.info("command refused", extra={"command": envelope.type, "id": envelope.id,
                                           "code": exc.code, "reason": exc.message})
        await self.publish(events.error(
            envelope.sender, envelope.type, envelope.id, exc.code, exc.message,
            run_id=run_id if run_id is not None else (
                envelope.id if envelope.type == Command.RUN_START.value else None),
        ))

    # -- runs queue: executing -------------------------------------------------------

    async def handle_run(self, envelope: Envelope, _message: AbstractIncomingMessage) -> None:
        """A queued run reached a free slot of this replica: claim it and execute it."""
        if self._draining:
            raise RuntimeError("runner shutting down; the run goes back to the queue")
        record = await self.db(self._store.claim, envelope.id, self.replica)
        if record is None:
            existing = await self.db(self._store.get, envelope.id)
            if existing is None:
                log.warning("queued run not in the database; dropped", extra={"id": envelope.id})
                return
            await self._redelivered(existing)
            return
        job = self._jobs.get(record.job)
        if job is None:  # accepted by a replica running other code
            await self.fail(record.id, f"job {record.job} does not exist on runner {self.replica}")
            return
        await self._execute(record, job)

    async def _redelivered(self, record: RunRecord) -> None:
        """A run claimed before: never run it twice; end it if its replica is gone."""
        if record.status is not RunStatus.RUNNING:
            return
        active = self._active.get(record.id)
        if active is not None:
            # Our own run, redelivered after a broker reconnect: hold this delivery
            # instead, so the prefetch still counts the run.
            await active.done.wait()
            return
        if record.replica == self.replica:
            reason = f"runner {self.replica} restarted while the run was running"
        elif utcnow() - record.heartbeat_at > timedelta(seconds=self.settings.heartbeat_timeout_s):
            reason = f"runner {record.replica} stopped sending heartbeats"
        elif record.replica is None or not await self.owner_alive(record.replica):
            reason = f"runner {record.replica} died"
        else:
            log.info("run redelivered; its runner is alive", extra={"run_id": record.id,
                                                                     "replica": record.replica})
            return
        await self.fail(record.id, reason)

    async def fail(self, run_id: str, reason: str) -> None:
        record = await self.db(
            self._store.finish, run_id, RunStatus.FAILED, exit_code=None, reason=reason
        )
        if record is not None:
            log.warning("run marked failed", extra={"run_id": run_id, "reason": reason})
            await self.announce_finished(record)

    async def _execute(self, record: RunRecord, job: Job) -> None:
        workdir = tempfile.mkdtemp(prefix=f"warren-run-{record.id[:16]}-")
        child = ChildRun(
            record.id,
            self._argv(job, record.args),
            self._child_env(),
            workdir,
            self._limits,
            publish=functools.partial(self._publish_output, record.owner, record.id),
            on_lines=lambda stream, n: self._metrics.lines[stream].inc(n),
            on_dropped=self._metrics.lines_dropped.inc,
            user=self.settings.child_user,
        )
        active = ActiveRun(record, child)
        self._active[record.id] = active
        self._metrics.active.set(len(self._active))
        self._metrics.started.labels(record.job).inc()
        log.info("run started", extra={"run_id": record.id, "job": record.job,
                                       "owner": record.owner})
        try:
            await self.publish(events.started(record))
            outcome = await child.run()
            await self._record_end(active, outcome)
        finally:
            del self._active[record.id]
            self._metrics.active.set(len(self._active))
            active.done.set()
            shutil.rmtree(workdir, ignore_errors=True)

    async def _record_end(self, active: ActiveRun, outcome: Outcome) -> None:
        # The job is gone and its outcome exists only here: a database outage must not lose
        # it (the run's redelivery could only fail it, as if this replica had died).
        progress = active.child.progress()
        final = await while_unavailable(lambda: self.db(
            self._store.finish, active.record.id, outcome.status,
            exit_code=outcome.exit_code, reason=outcome.reason, progress=progress,
        ), for_s=END_RETRY_S)
        if final is None:
            log.warning("run already ended elsewhere", extra={"run_id": active.record.id})
            return
        # Counted before it is announced: whoever hears of the end may read the metric.
        if active.stop_ts is not None and outcome.status is RunStatus.STOPPED:
            self._metrics.stop_latency.observe(max(0.0, time.time() - active.stop_ts))
        await self.announce_finished(final)
        log.info("run finished", extra={"run_id": final.id, "status": final.status.value,
                                        "exit_code": final.exit_code, "lines": final.line_count})

    async def announce_finished(self, record: RunRecord) -> None:
        self._metrics.finished[record.status].inc()
        await self.publish(events.finished(record))

    def _argv(self, job: Job, args: dict[str, Any]) -> list[str]:
        files_dir = self.settings.files_dir
        context = {"job": job.name, "http_base_url": self.settings.http_job_url,
                   "orphan_grace_s": 1.0,
                   "files_dir": str(files_dir) if files_dir is not None else None}
        return [
            sys.executable, "-m", "services.runner.child", self._jobs.reference(job.name),
            orjson.dumps(args).decode(), orjson.dumps(context).decode(),
        ]

    def _child_env(self) -> dict[str, str]:
        # Jobs get no part of the runner's own environment (it holds broker and
        # database credentials): only what Python needs to find Warren and the jobs.
        return {
            "PATH": self.settings.child_path,
            "PYTHONPATH": os.pathsep.join(dict.fromkeys((REPO_ROOT, *self._import_paths))),
            "PYTHONSAFEPATH": "1",
            "PYTHONUNBUFFERED": "1",  # C stdio too: C extensions' printf arrives live
            "PYTHONIOENCODING": "utf-8",
            "LANG": "C.UTF-8",
        }

    async def _publish_output(self, owner: str, run_id: str, seq: int, batch: Batch) -> None:
        await self._publisher.publish_event(
            events.output(owner, run_id, seq, batch.stream, batch.lines)
        )
        self._metrics.batches.inc()

    async def publish(self, envelope: Envelope) -> None:
        """Publish an event, retrying with backoff for a while; never raises."""
        delay = 0.05
        give_up = time.monotonic() + EVENT_RETRY_S
        while True:
            try:
                await self._publisher.publish_event(envelope)
                return
            except Exception:
                if time.monotonic() + delay > give_up:
                    log.exception("event lost", extra={"type": envelope.type, "id": envelope.id})
                    return
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    # -- stop ------------------------------------------------------------------------

    def stop_local(self, run_id: str, requester: str, stop_ts: float) -> bool:
        """Stop a run executing here; False if it is not (or no longer) here."""
        active = self._active.get(run_id)
        if active is None:
            return False
        if active.child.request_stop(RunStatus.STOPPED, f"stopped by {requester}"):
            active.stop_ts = stop_ts
        log.info("stop requested", extra={"run_id": run_id, "by": requester})
        return True

    async def stop_queued(self, run_id: str, requester: str, stop_ts: float) -> bool:
        """End a run that no replica has claimed yet; False if one has (or it ended)."""
        record = await self.db(
            self._store.finish, run_id, RunStatus.STOPPED, exit_code=None,
            reason=f"stopped by {requester}", was=RunStatus.QUEUED,
        )
        if record is None:
            return False
        self._metrics.stop_latency.observe(max(0.0, time.time() - stop_ts))
        await self.announce_finished(record)
        return True

    async def is_admin(self, user_id: str) -> bool:
        record = await self.db(self._users.get, user_id)
        return record is not None and self.settings.admin_role in record.roles

    # -- liveness ----------------------------------------------------------------------

    async def fail_own_stale_runs(self) -> None:
        """At start-up: runs recorded as running here belong to a dead earlier process."""
        reason = f"runner {self.replica} restarted while the run was running"
        for record in await self.db(self._store.fail_replica, self.replica, reason):
            log.warning("stale run marked failed", extra={"run_id": record.id})
            await self.announce_finished(record)

    async def heartbeat(self) -> None:
        """Refresh our runs in the database, then end runs of silent replicas and runs
        that waited too long for a slot."""
        progress = [active.child.progress() for active in self._active.values()]
        lost = await self.db(self._store.heartbeat, self.replica, progress)
        for run_id in lost:
            self._abandon(run_id)
        now = utcnow()
        failed = await self.db(
            self._store.fail_stale, now - timedelta(seconds=self.settings.heartbeat_timeout_s),
            "runner {replica} stopped sending heartbeats",
        )
        for record in failed:
            self._abandon(record.id)
            await self.announce_finished(record)
        wait = self.settings.max_queue_s
        expired = await self.db(
            self._store.expire_queued, now - timedelta(seconds=wait),
            f"no runner had a free slot within {wait:g} s",
        )
        for record in expired:
            await self.announce_finished(record)

    def _abandon(self, run_id: str) -> None:
        active = self._active.get(run_id)
        if active is not None:
            # Its end is already recorded: the job is ended and nothing more published.
            active.child.request_stop(RunStatus.FAILED, "marked failed by another replica")

    async def _assume_alive(self, _replica: str) -> bool:
        return True

    # -- shutdown ------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        """From now on, runs delivered here go back to the queue for other replicas."""
        self._draining = True

    async def shutdown(self, deadline_s: float) -> None:
        """Let runs finish for most of the deadline, then stop the rest."""
        self.stop_accepting()
        if not self._active:
            return
        escalation = self.settings.stop_grace_s + self.settings.kill_grace_s + 0.5
        waiting = [asyncio.create_task(a.done.wait()) for a in self._active.values()]
        await asyncio.wait(waiting, timeout=max(0.0, deadline_s - escalation))
        for active in list(self._active.values()):
            active.child.request_stop(RunStatus.STOPPED, "runner shutting down")
        await asyncio.wait(waiting, timeout=escalation + 2.0)
        for task in waiting:
            task.cancel()

"""``warren up``: the whole system on one machine, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Mapping

import httpx

from services.supervisor.cat import choose_cat, describe
from services.supervisor.demo import DemoUser, prepare_database, service_key
from services.supervisor.output import Output
from services.supervisor.plan import ChildSpec, host_id, service_specs, user_service_specs
from services.supervisor.ports import assign_ports
from services.supervisor.settings import EDGE, KINDS, RELAY, UpSettings
from services.supervisor.supervisor import StartFailed, Supervisor


def up(settings: UpSettings, env: Mapping[str, str], output: Output, python: str) -> int:
    """Run until a signal; the exit status is 0 when everything started and stopped cleanly."""
    # A taken port stops us before anything starts.
    ports = assign_ports(settings.placements + tuple(s.placement for s in settings.services))
    created = prepare_database(settings.common.database_url)
    key = None if settings.relay_api_key_configured else service_key()
    return asyncio.run(_supervise(settings, env, output, python, ports, created, key))


async def _supervise(
    settings: UpSettings,
    env: Mapping[str, str],
    output: Output,
    python: str,
    ports: dict[str, list[int]],
    created: list[DemoUser],
    key: str | None,
) -> int:
    """``key``: the relays' service key, when made for this run (else it is configured)."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with httpx.AsyncClient() as http:
        cat, local_cat = await choose_cat(settings.cat, http)
        specs: list[ChildSpec] = [local_cat] if local_cat is not None else []
        host = host_id(socket.gethostname())
        specs += service_specs(settings, ports, cat, python, host, relay_api_key=key)
        specs += user_service_specs(settings, ports, python, host)
        supervisor = Supervisor(
            specs, env, output, http,
            ready_timeout_s=settings.ready_timeout_s,
            optional_ready_timeout_s=settings.cat_ready_timeout_s,
            stop_timeout_s=settings.stop_timeout_s,
        )
        stop = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                output.warn("killing everything now")
                supervisor.kill_all()
                return
            output.note("stopping (Ctrl-C again kills at once)")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        starting = asyncio.create_task(supervisor.start())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()
                _summary(settings, output, supervisor, ports, describe(cat, settings.cat), created,
                         key, loop.time() - began)
                await stopping
            else:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
        except StartFailed as exc:
            output.error(f"start-up failed: {exc}; see its lines above")
            supervisor.failures.append(str(exc))
        finally:
            stopping.cancel()
            try:
                await supervisor.stop()
            finally:
                supervisor.kill_all()  # whatever a failed stop left running: never orphans
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    output.note("all stopped" if not supervisor.failures else "stopped, with failures (above)")
    return supervisor.exit_code


def _summary(
    settings: UpSettings,
    output: Output,
    supervisor: Supervisor,
    ports: dict[str, list[int]],
    cat: str,
    created: list[DemoUser],
    key: str | None,
    seconds: float,
) -> None:
    edge = settings.placement(EDGE)
    urls = [f"http://{edge.probe_host}:{port}/" for port in ports[EDGE.name]]
    lines = [f"Warren is up ({len(supervisor.children)} processes, ready in {seconds:.1f} s)"]
    lines.append(f"  console   {urls[0]}")
    if len(urls) > 1:
        lines.append(f"            also {', '.join(urls[1:])}")
    for kind in KINDS:
        listed = ", ".join(f"{kind.name}-{i + 1} :{p}" for i, p in enumerate(ports[kind.name]))
        lines.append(f"  {kind.name:<9} {listed}")
    for service in settings.services:
        port = ports[service.name][0]
        lines.append(f"  {service.name:<9} :{port} ({service.reference})")
    lines.append(f"  cat       {cat}")
    lines.append(f"  database  {settings.common.database_url}")
    if created:
        lines.append("  demo users (the database was empty; passwords are shown only now):")
        for user in created:
            groups, roles = ", ".join(user.groups) or "-", ", ".join(user.roles) or "-"
            lines.append(
                f"    {user.name:<6} password {user.password}   groups {groups:<8} roles {roles}"
            )
    relay = settings.placement(RELAY)
    send_url = f"http://{relay.probe_host}:{ports[RELAY.name][0]}/send"
    if key is None:
        lines.append("  relay key as configured (WARREN_RELAY_API_KEY), for POST /send")
    else:
        lines.append(f"  relay key {key}   (for POST /send; a new one each run)")
    bearer = key or "$WARREN_RELAY_API_KEY"
    body = '{"user_id": "bob", "message": "Hello, Cat"}'
    lines.append(
        f'  try       curl -X POST {send_url} -H "Authorization: Bearer {bearer}" -d \'{body}\''
    )
    lines.append("Ctrl-C stops everything.")
    for line in lines:
        output.note(line)

"""The ``warren`` command: run services and do small administrative jobs."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Final

import orjson

from shared.auth import AuthSettings, TokenService
from shared.config import CommonSettings, ConfigError
from shared.db import UserExists, UserStore, create_schema, make_engine, session_factory
from shared.db.keys import SCOPES, KeyStore, Scope
from shared.logging import configure_logging
from shared.messaging import AddressError, Envelope, parse_destination, parse_sender
from shared.messaging.broker import BrokerUnavailable, Publisher, connect
from shared.service import run_service


@dataclass(frozen=True, slots=True)
class ServiceCommand:
    """A command that runs a service: ``<package>.settings.<settings>.from_env``, then
    ``<package>.server.serve``. The package is imported only then, so that a command
    loads no other service's dependencies."""

    help: str
    package: str
    settings: str  # the settings class's name in ``<package>.settings``
    log_name: str
    on_uvloop: bool  # shared.service.run_service says which services run on uvloop, and why


#: The edge of a development machine (``warren edge`` with its default port).
DEFAULT_LISTEN_URL: Final = "ws://127.0.0.1:8000/ws"

SERVICES: Final = {
    "edge": ServiceCommand(
        "run the WebSocket edge", "services.ws_edge", "EdgeSettings", "edge", on_uvloop=True
    ),
    "cat-relay": ServiceCommand(
        "run the Cheshire Cat relay", "services.cat_relay", "RelaySettings", "cat_relay",
        on_uvloop=True,
    ),
    "runner": ServiceCommand(
        "run the job runner", "services.runner", "RunnerSettings", "runner", on_uvloop=False
    ),
    "excel-worker": ServiceCommand(
        "run the Excel export worker", "services.excel_worker", "ExcelSettings", "excel_worker",
        on_uvloop=False,
    ),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="warren", description="Warren real-time messaging.")
    sub = parser.add_subparsers(dest="command", required=True)

    for command, service in SERVICES.items():
        sub.add_parser(command, help=service.help)
    serve = sub.add_parser(
        "serve", help="run your own service (warren.service.Service; docs/extending.md)"
    )
    serve.add_argument("service", metavar="MODULE:ATTRIBUTE",
                       help="where the Service is, e.g. orders.service:service")
    up = sub.add_parser(
        "up", help="development: run every service under one supervisor, with the web console"
    )
    for kind, default in (("edges", 1), ("relays", 1), ("runners", 1), ("workers", 1)):
        up.add_argument(f"--{kind}", type=int, default=default, metavar="N",
                        help=f"replicas of the {kind[:-1]} service (default {default})")
    up.add_argument("--service", action="append", default=[], dest="services",
                    metavar="NAME=MODULE:ATTRIBUTE",
                    help="also run your own service, as 'warren serve MODULE:ATTRIBUTE' "
                    "(repeatable; added to the [services] of warren.toml)")
    up.add_argument("--config", metavar="PATH",
                    help="the file whose [services] table lists your services "
                    "(default: warren.toml in the current directory, if there is one)")

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--password", help="the password (asked for when left out)")
    add.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    add.add_argument("--role", action="append", default=[], help="a role (repeatable)")

    token = sub.add_parser("token", help="print a JWT for an existing user (development)")
    token.add_argument("name")
    token.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")

    key = sub.add_parser("key", help="manage service API keys (publishing over HTTP)")
    key_actions = key.add_subparsers(dest="action", required=True)
    key_add = key_actions.add_parser("add", help="make a key for a service; prints it once")
    key_add.add_argument("name", help="the service: its events come from service:<name>")
    key_add.add_argument("--scope", action="append", choices=sorted(SCOPES),
                         help="what the key allows (repeatable; default publish)")
    key_actions.add_parser("list", help="list keys (never their secrets)")
    key_revoke = key_actions.add_parser("revoke", help="revoke a key by id, or every key of a name")
    key_revoke.add_argument("name_or_id")

    listen = sub.add_parser(
        "listen", help="print the events a user's socket receives, as JSON lines, until Ctrl-C"
    )
    listen.add_argument("--user", help="development: connect as this user (a token is issued "
                        "for it); otherwise the token is WARREN_TOKEN")
    listen.add_argument("--type", action="append", default=[], dest="types", metavar="TYPE",
                        help="print only events of this type (repeatable)")
    listen.add_argument("--url", default=DEFAULT_LISTEN_URL,
                        help=f"the edge's WebSocket address (default {DEFAULT_LISTEN_URL})")

    publish = sub.add_parser("publish", help="publish an event to warren.events")
    publish.add_argument("address", help="user:<id>, group:<name> or broadcast")
    publish.add_argument("data", help="the event's data, a JSON object")
    publish.add_argument("--type", default="message", help="the event type (default: message)")
    publish.add_argument("--sender", default="service:cli", help="the from address")
    return parser


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> None:
    args = _parser().parse_args(argv)
    env = os.environ if env is None else env
    try:
        if args.command in SERVICES:
            _serve(SERVICES[args.command], env)
        elif args.command == "serve":
            from warren.service import run

            run(args.service, env)
        elif args.command == "up":
            _up(env, args)
        elif args.command == "user":
            _user_add(env, args)
        elif args.command == "token":
            _token(env, args)
        elif args.command == "key":
            _key(env, args)
        elif args.command == "publish":
            _publish(env, args)
        elif args.command == "listen":
            _listen(env, args)
    except (ConfigError, BrokerUnavailable, AddressError, UserExists, ValueError) as exc:
        print(f"warren {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def _serve(service: ServiceCommand, env: Mapping[str, str]) -> None:
    settings = getattr(import_module(f"{service.package}.settings"), service.settings).from_env(env)
    serve = import_module(f"{service.package}.server").serve
    configure_logging(service.log_name, settings.common.log_level)
    run_service(serve(settings), on_uvloop=service.on_uvloop)


def _up(env: Mapping[str, str], args: argparse.Namespace) -> None:
    from services.supervisor.output import Output
    from services.supervisor.settings import UpSettings, config_file, declared_services
    from services.supervisor.up import up

    replicas = {
        "edge": args.edges, "relay": args.relays, "runner": args.runners, "excel": args.workers
    }
    services = declared_services(args.services, config_file(args.config))
    settings = UpSettings.from_env(env, replicas, services)
    colour = sys.stdout.isatty() and "NO_COLOR" not in env
    raise SystemExit(up(settings, env, Output(sys.stdout, colour), sys.executable))


def _store(common: CommonSettings) -> UserStore:
    engine = make_engine(common.database_url)
    create_schema(engine)
    return UserStore(session_factory(engine))


def _user_add(env: Mapping[str, str], args: argparse.Namespace) -> None:
    common = CommonSettings.from_env(env, "cli")
    password = args.password or getpass.getpass(f"password for {args.name}: ")
    record = _store(common).add(args.name, password, tuple(args.group), tuple(args.role))
    print(orjson.dumps({"user": record.id, "groups": record.groups, "roles": record.roles}).decode())


def _token(env: Mapping[str, str], args: argparse.Namespace) -> None:
    print(_issuer(env, args.name)(args.ttl))


def _issuer(env: Mapping[str, str], name: str) -> Callable[[int | None], str]:
    """Issue tokens for the user ``name``, with the groups and roles it has at the time."""
    common = CommonSettings.from_env(env, "cli")
    tokens = TokenService(AuthSettings.from_env(env, development=common.development))
    store = _store(common)

    def issue(ttl_s: int | None = None) -> str:
        record = store.get(name)
        if record is None:
            raise ValueError(f"no user {name!r}; add one with 'warren user add'")
        return tokens.issue(record.id, record.groups, record.roles, ttl_s=ttl_s)

    return issue


def _key(env: Mapping[str, str], args: argparse.Namespace) -> None:
    common = CommonSettings.from_env(env, "cli")
    engine = make_engine(common.database_url)
    try:
        create_schema(engine)
        keys = KeyStore(session_factory(engine))
        if args.action == "add":
            record, text = keys.add(args.name, args.scope or [Scope.PUBLISH])
            print(text)
            print(f"key {record.id} for service:{record.name} ({', '.join(sorted(record.scopes))}); "
                  "it is shown only this once", file=sys.stderr)
        elif args.action == "list":
            for record in keys.all():
                print(orjson.dumps(record.to_json()).decode())
        else:
            for record in keys.revoke(args.name_or_id):
                print(orjson.dumps(record.to_json()).decode())
    finally:
        engine.dispose()


def _publish(env: Mapping[str, str], args: argparse.Namespace) -> None:
    common = CommonSettings.from_env(env, "cli")
    try:
        data = orjson.loads(args.data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"data is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("data must be a JSON object")
    envelope = Envelope(
        type=args.type, to=parse_destination(args.address), sender=parse_sender(args.sender), data=data
    )

    async def publish() -> None:
        connection = await connect(common.amqp_url, name="warren-cli")
        async with connection:
            publisher = await Publisher.open(connection, common.history)
            await publisher.publish_event(envelope)

    asyncio.run(publish())
    print(envelope.id)



def _listen(env: Mapping[str, str], args: argparse.Namespace) -> None:
    """Print each event a user's socket receives as a JSON line, and the connection's
    states on stderr, until Ctrl-C (exit 0) or until the client stops (exit 1)."""
    from warren.client import Client, StateChange, WarrenError

    get_token: Callable[[], Awaitable[str]] | None = None
    if args.user is not None:
        if not CommonSettings.from_env(env, "cli").development:
            raise ValueError("--user issues a token, which only WARREN_ENV=development does; "
                             "set WARREN_TOKEN instead")
        issue = _issuer(env, args.user)
        token = issue(None)  # an unknown user is refused now rather than at its first refresh

        async def get_token() -> str:
            return await asyncio.to_thread(issue, None)
    else:
        token = env.get("WARREN_TOKEN", "").strip()
        if not token:
            raise ValueError("no token: set WARREN_TOKEN, or --user NAME in development")

    def show(change: StateChange) -> None:
        if change.state == "connected" and client.welcome is not None:
            detail = f" to {client.welcome.edge} as {client.welcome.user}"
        elif change.delay is not None:
            detail = f" in {change.delay:.1f} s after {change.error}"
        else:
            detail = f": {change.error}" if change.error is not None else ""
        print(f"warren listen: {change.state}{detail}", file=sys.stderr, flush=True)

    client = Client(args.url, token=token, get_token=get_token)
    client.on_state(show)

    async def listen() -> None:
        events = client.events(*args.types)
        try:
            async with client:
                async for event in events:
                    sys.stdout.write(orjson.dumps(event.to_dict()).decode() + "\n")
                    sys.stdout.flush()
        except WarrenError as exc:
            print(f"warren listen: stopped: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc

    try:
        asyncio.run(listen())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

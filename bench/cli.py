"""What the benches' command lines share: the output and broker flags, the ``--worker``
mode of a bench that launches itself as its drivers, the time budget of a run, and the
notice of a run that stopped early."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from bench.servers import ServerProcess

DEFAULT_AMQP_URL: Final = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_API_URL: Final = "http://127.0.0.1:15672"
WORKER_LIFETIME_S: Final = 3600.0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--markdown``, ``--logs``, ``--amqp-url`` and ``--api-url``; see :func:`check_local`."""
    parser.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    parser.add_argument("--logs", type=Path, help="keep the processes' logs in this directory")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    parser.add_argument("--api-url", default=DEFAULT_API_URL)


def check_local(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse broker URLs of another machine: the bench's traffic stays on this one."""
    for url in (args.amqp_url, args.api_url):
        if "127.0.0.1" not in url and "localhost" not in url:
            parser.error(f"the bench only talks to this machine, not {url}")


def add_edge_settings(parser: argparse.ArgumentParser, help: str) -> None:
    """``--edge-setting NAME=VALUE``, repeatable: ``WARREN_*`` variables for the edges."""
    parser.add_argument("--edge-setting", action="append", default=[], metavar="NAME=VALUE",
                        help=help)


def edge_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """The ``--edge-setting`` values as a mapping; a malformed one is a usage error."""
    settings = dict(s.partition("=")[::2] for s in args.edge_setting)
    if not all(name.startswith("WARREN_") and value for name, value in settings.items()):
        parser.error("--edge-setting takes WARREN_NAME=VALUE")
    return settings


def worker_args(lifetime_s: float) -> list[str]:
    """The arguments that start a bench module in its ``--worker`` mode."""
    return ["--worker", "--lifetime", str(lifetime_s)]


def worker_mode(arguments: Sequence[str], prog: str, description: str,
                worker_main: Callable[[float], None]) -> bool:
    """If ``arguments`` ask for the ``--worker`` mode, run ``worker_main`` with the
    lifetime they give and return True; otherwise return False."""
    if list(arguments[:1]) != ["--worker"]:
        return False
    worker = argparse.ArgumentParser(prog=prog, description=description)
    worker.add_argument("--worker", action="store_true")
    worker.add_argument("--lifetime", type=float, default=WORKER_LIFETIME_S,
                        help="exit after this many s")
    worker_main(worker.parse_args(arguments).lifetime)
    return True


def run_within(run: Coroutine[Any, Any, None], budget_s: float, name: str) -> None:
    """Run ``run`` on a new event loop, stopping it when ``budget_s`` is over."""
    try:
        asyncio.run(asyncio.wait_for(run, budget_s))
    except TimeoutError:
        print(f"{name} stopped: over its {budget_s:.0f} s budget", file=sys.stderr)


def abort_notice(heading: str, exc: BaseException, server: ServerProcess, label: str) -> str:
    """Say on stderr why a run stopped, with the last lines of ``server``'s log; return
    the error as the report shows it."""
    error = f"{type(exc).__name__}: {exc}"
    print(f"{heading}: {error}", file=sys.stderr)
    for line in server.tail()[-5:]:
        print(f"  {label} log: {line}", file=sys.stderr)
    return error

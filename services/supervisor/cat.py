"""Which Cheshire Cat the relays talk to: a configured one that answers, else a local Cat 2.x
started from its own virtualenv, else none (chat then answers "Cat unavailable")."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from services.supervisor.plan import CatPlan, ChildSpec
from services.supervisor.settings import CAT_TIER, ROOT, CatLookup

PROBE_TIMEOUT_S = 2.0
FIND_CAT = "import importlib.util, sys; sys.exit(importlib.util.find_spec('cat') is None)"
LOCAL_PORT = 1865  # the Cat's own default, when free


async def cat_answers(http: httpx.AsyncClient, url: str) -> bool:
    """Both Cat versions answer ``GET /`` with 200 and a status object."""
    try:
        response = await http.get(f"{url}/", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def installed_cat(lookup: CatLookup) -> Path | None:
    """The interpreter of a virtualenv that has the Cat (``cheshire-cat-ai``) installed."""
    python = lookup.venv / "bin" / "python"
    if not python.exists():
        return None
    check = await asyncio.create_subprocess_exec(
        str(python), "-c", FIND_CAT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    return python if await check.wait() == 0 else None


def _listen() -> socket.socket:
    """A loopback listener on the Cat's usual port, or any free one; the Cat serves on it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", LOCAL_PORT))
    except OSError:
        listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def local_cat(python: Path, workdir: Path) -> ChildSpec:
    """The Cat as a child that serves on a socket bound here, so no one can take its port."""
    listener = _listen()
    port = int(listener.getsockname()[1])
    fd = listener.detach()  # owned by the spec now: the child gets it, the supervisor closes it
    return ChildSpec(
        name="cat",
        kind="cat",
        tier=CAT_TIER,
        argv=(str(python), str(ROOT / "scripts" / "cat-v2.py"),
              "--port", str(port), "--fd", str(fd)),
        env={},
        port=port,
        ready_url=f"http://127.0.0.1:{port}/status",
        required=False,  # Warren works without it; chat says "Cat unavailable"
        cwd=workdir,
        log_file=workdir / "cat.log",  # the Cat is chatty; Warren's own lines stay readable
        pass_fds=(fd,),
    )


async def choose_cat(
    lookup: CatLookup, http: httpx.AsyncClient
) -> tuple[CatPlan, ChildSpec | None]:
    """Use the configured (or default) Cat if it answers; else start one; else go without."""
    if await cat_answers(http, lookup.url):
        return CatPlan(lookup.url, "configured" if lookup.configured else "default"), None
    python = await installed_cat(lookup)
    if python is not None:
        lookup.workdir.mkdir(parents=True, exist_ok=True)
        cat = local_cat(python, lookup.workdir)
        protocol = None if lookup.protocol_configured else "v2"
        return CatPlan(f"http://127.0.0.1:{cat.port}", "local", protocol), cat
    return CatPlan(lookup.url, "none"), None


def describe(plan: CatPlan, lookup: CatLookup) -> str:
    """One line for the start-up summary."""
    if plan.origin == "local":
        return f"{plan.url}  (a local Cat 2.x from {lookup.venv})"
    if plan.origin in {"configured", "default"}:
        return f"{plan.url}  (WARREN_CAT_URL)" if plan.origin == "configured" else plan.url
    host = urlsplit(plan.url).netloc
    return (
        f'none: nothing answers at {host} and no Cat is installed in {lookup.venv}; '
        f'the chat panel shows "Cat unavailable" (docs/console.md says how to install one)'
    )

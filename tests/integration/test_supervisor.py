"""The supervisor with real child processes: small HTTP servers that play the services."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from services.supervisor.child import SETPRIV
from services.supervisor.output import Output
from services.supervisor.plan import ChildSpec
from services.supervisor.ports import free_port
from services.supervisor.supervisor import StartFailed, Supervisor

# argv: name, port, mode ("serve", "ignore-term", "exit-early"), probes to answer 503 first
FAKE_SERVICE = r"""
import http.server, os, signal, sys
name, port, mode, not_ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
probes = 0

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global probes
        probes += 1
        if probes == not_ready + 1:
            print(f"{name} ready now", flush=True)
        self.send_response(200 if probes > not_ready else 503)
        self.end_headers()

    def log_message(self, *args):
        pass

def on_sigterm(*_):
    print(f"{name} got SIGTERM", flush=True)
    if mode != "ignore-term":
        os._exit(0)

signal.signal(signal.SIGTERM, on_sigterm)
if mode == "exit-early":
    print(f"{name} fails at start", flush=True)
    sys.exit(3)
server = http.server.HTTPServer(("127.0.0.1", port), Ready)
server.timeout = 0.05
while True:
    server.handle_request()
"""


class Lines:
    """The supervisor's terminal, kept as lines that tests can wait for."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        self._changed.set()
        return len(text)

    def flush(self) -> None:
        pass

    def index(self, text: str) -> int:
        return next(i for i, line in enumerate(self.lines) if text in line)

    async def wait_for(self, text: str, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not any(text in line for line in self.lines):
                self._changed.clear()
                await self._changed.wait()


def fake(
    name: str, tier: int, *, mode: str = "serve", not_ready: int = 0, required: bool = True
) -> ChildSpec:
    port = free_port("127.0.0.1")
    return ChildSpec(
        name=name,
        kind=name.split("-")[0],
        tier=tier,
        argv=(sys.executable, "-c", FAKE_SERVICE, name, str(port), mode, str(not_ready)),
        env={},
        port=port,
        ready_url=f"http://127.0.0.1:{port}/readyz",
        required=required,
    )


Build = Callable[..., Supervisor]


@pytest.fixture
async def supervise() -> AsyncIterator[tuple[Build, Lines]]:
    lines = Lines()
    built: list[Supervisor] = []
    async with httpx.AsyncClient() as http:

        def build(
            *specs: ChildSpec, ready: float = 10.0, optional: float = 10.0, stop: float = 5.0
        ) -> Supervisor:
            supervisor = Supervisor(
                specs,
                dict(os.environ),
                Output(lines, colour=False),
                http,
                ready_timeout_s=ready,
                optional_ready_timeout_s=optional,
                stop_timeout_s=stop,
            )
            built.append(supervisor)
            return supervisor

        yield build, lines
        for supervisor in built:
            supervisor.kill_all()
            await supervisor.stop()


async def test_each_tier_is_ready_before_the_next_starts_and_they_stop_in_reverse(
    supervise: tuple[Build, Lines],
) -> None:
    build, lines = supervise
    supervisor = build(
        fake("cat", 0, required=False),
        fake("runner-1", 1, not_ready=3),
        fake("relay-1", 1),
        fake("edge-1", 2, not_ready=2),
    )
    await supervisor.start()
    assert lines.index("runner-1 ready now") < lines.index("started edge-1")
    assert lines.index("relay-1 ready now") < lines.index("started edge-1")
    assert lines.index("started cat") < lines.index("started runner-1")
    assert any("edge-1 ready now" in line for line in lines.lines)

    await supervisor.stop()
    order = [lines.index(f"{name} got SIGTERM") for name in ("edge-1", "runner-1", "cat")]
    assert order == sorted(order)
    assert lines.index("[up] edge-1 stopped") < lines.index("[up] stopping runner-1, relay-1")
    assert lines.index("[up] relay-1 stopped") < lines.index("[up] stopping cat")
    assert supervisor.exit_code == 0
    assert not any(child.running for child in supervisor.children)


async def test_a_child_that_ignores_sigterm_is_killed_after_the_deadline(
    supervise: tuple[Build, Lines],
) -> None:
    build, lines = supervise
    supervisor = build(fake("runner-1", 1, mode="ignore-term"), stop=0.5)
    await supervisor.start()
    await supervisor.stop()
    assert any("runner-1 got SIGTERM" in line for line in lines.lines)
    assert any("runner-1 did not stop within 0.5 s: killed" in line for line in lines.lines)
    assert supervisor.children[0].exited.result() == -signal.SIGKILL
    assert supervisor.exit_code == 1


async def test_a_child_that_dies_is_reported_and_the_others_keep_running(
    supervise: tuple[Build, Lines],
) -> None:
    build, lines = supervise
    supervisor = build(fake("runner-1", 1), fake("runner-2", 1), fake("edge-1", 2))
    await supervisor.start()
    victim, survivor = supervisor.children[0], supervisor.children[1]
    os.kill(victim.pid, signal.SIGKILL)
    await lines.wait_for(f"runner-1 (pid {victim.pid}) exited unexpectedly with signal SIGKILL")
    async with httpx.AsyncClient() as http:
        assert (await http.get(survivor.spec.ready_url)).status_code == 200
    assert survivor.running and supervisor.children[2].running
    await supervisor.stop()
    assert supervisor.exit_code == 1
    assert any("runner-2 stopped" in line for line in lines.lines)


async def test_a_child_that_exits_before_it_is_ready_aborts_the_start(
    supervise: tuple[Build, Lines],
) -> None:
    build, lines = supervise
    supervisor = build(
        fake("runner-1", 1), fake("relay-1", 1, mode="exit-early"), fake("edge-1", 2)
    )
    with pytest.raises(StartFailed, match="relay-1 exited with code 3 before it was ready"):
        await supervisor.start()
    assert not any("started edge-1" in line for line in lines.lines)
    assert any("relay-1 fails at start" in line for line in lines.lines)  # its own lines are shown
    await supervisor.stop()
    assert any("runner-1 stopped" in line for line in lines.lines)
    assert not any(child.running for child in supervisor.children)


async def test_a_required_child_that_never_gets_ready_aborts_the_start(
    supervise: tuple[Build, Lines],
) -> None:
    build, _ = supervise
    supervisor = build(fake("excel-1", 1, not_ready=10**9), ready=1.0)
    with pytest.raises(
        StartFailed, match=r"excel-1 was not ready within 1 s \(http://127.0.0.1:\d+/readyz\)"
    ):
        await supervisor.start()


async def test_an_optional_child_that_never_gets_ready_is_only_warned_about(
    supervise: tuple[Build, Lines],
) -> None:
    build, lines = supervise
    supervisor = build(
        fake("cat", 0, not_ready=10**9, required=False), fake("edge-1", 2), optional=1.0
    )
    await supervisor.start()
    assert any(
        "cat was not ready within 1 s" in line and "carrying on without it" in line
        for line in lines.lines
    )
    assert supervisor.children[1].running
    await supervisor.stop()
    assert supervisor.exit_code == 0


# A supervisor in a process of its own, so that the test can SIGKILL it: argv[1] is the
# JSON of one ChildSpec; it prints the child's pid once the child is ready.
LONE_SUPERVISOR = r"""
import asyncio, json, os, sys
import httpx
from services.supervisor.output import Output
from services.supervisor.plan import ChildSpec
from services.supervisor.supervisor import Supervisor

async def main():
    fields = json.loads(sys.argv[1])
    spec = ChildSpec(**{**fields, "argv": tuple(fields["argv"])})
    async with httpx.AsyncClient() as http:
        supervisor = Supervisor([spec], dict(os.environ), Output(sys.stderr, colour=False), http,
                                ready_timeout_s=10, optional_ready_timeout_s=10, stop_timeout_s=5)
        await supervisor.start()
        print(supervisor.children[0].pid, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.skipif(SETPRIV is None, reason="needs util-linux's setpriv (Linux)")
async def test_children_stop_when_the_supervisor_is_killed() -> None:
    spec = fake("edge-1", 1)
    fields = {"name": spec.name, "kind": spec.kind, "tier": spec.tier, "argv": spec.argv,
              "env": {}, "port": spec.port, "ready_url": spec.ready_url}
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LONE_SUPERVISOR, json.dumps(fields),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert supervisor.stdout is not None
        child_pid = int(await asyncio.wait_for(supervisor.stdout.readline(), 30))
        # A pidfd turns readable when its process ends, whoever its parent is by then.
        pidfd = os.pidfd_open(child_pid)
        try:
            ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_end() -> None:
                if not ended.done():
                    ended.set_result(None)

            asyncio.get_running_loop().add_reader(pidfd, on_end)
            assert not ended.done()
            supervisor.kill()  # SIGKILL: the supervisor stops nothing itself
            await asyncio.wait_for(ended, 10)
        finally:
            asyncio.get_running_loop().remove_reader(pidfd)
            if not ended.done():  # the test failed: no child may outlive it
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
    finally:
        if supervisor.returncode is None:
            supervisor.kill()
        await supervisor.wait()

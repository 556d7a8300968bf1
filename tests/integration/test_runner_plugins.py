"""Jobs from outside Warren: a module named in WARREN_RUNNER_JOBS runs end to end through
the edge, a job restricted to a role is refused to others, and a replica whose job
module is broken refuses to start while the running replicas go on.

The module lives in a directory of its own that only the runner's ``sys.path`` holds (as
``PYTHONPATH`` or the current directory would): the run's child process must get it too.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.db import UserStore
from services.runner.registry import JobLoadError
from services.runner.server import RunnerServer
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import (  # noqa: F401
    RunnerProcess, collect, make_runner, runner_env, start_run,
)

MODULE = "acme_plugin_jobs"
SOURCE = '''
from warren import Job, JobContext, Param

def words(args, ctx: JobContext) -> None:
    for word in args["text"].split():
        print(word)

def audit(args, ctx: JobContext) -> None:
    print("audited")

WORDS = Job("acme_words", "one word per line", words, params={"text": Param("str", "the text")})
AUDIT = Job("acme_audit", "for the operations team", audit, roles=("ops",))
'''


@pytest.fixture
def plugin_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory with the job modules, readable by the user job processes run as."""
    root = Path(tempfile.mkdtemp(prefix="warren-plugin-"))
    root.chmod(0o755)
    (root / f"{MODULE}.py").write_text(textwrap.dedent(SOURCE))
    (root / "acme_broken_jobs.py").write_text("raise ImportError('acme needs libfoo')\n")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in (MODULE, "acme_broken_jobs"):  # the next test's directory is another
        sys.modules.pop(name, None)
    shutil.rmtree(root)


JOBS = f"{MODULE}:WORDS,{MODULE}:AUDIT"


async def test_a_job_module_from_the_setting_runs_end_to_end(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    plugin_dir: Path,
) -> None:
    runner = make_runner(WARREN_RUNNER_JOBS=JOBS)
    await runner.start()
    assert runner.jobs is not None and {"acme_words", "lines"} <= set(runner.jobs)
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "acme_words", {"text": "bring your own work"})
    events = await collect(client, run_id)
    assert events.lines() == ["bring", "your", "own", "work"]
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()


async def test_enabled_jobs_are_the_only_ones_offered(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    plugin_dir: Path,
) -> None:
    await make_runner(WARREN_RUNNER_JOBS=JOBS, WARREN_RUNNER_JOBS_ENABLED="acme_words").start()
    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "countdown", {"start": 1, "interval_s": 0})
    events = await collect(client, run_id, until="run.error")
    assert events.errors[0]["code"] == "unknown_job"
    assert events.errors[0]["message"].endswith("the jobs are: acme_words")
    client.close()


async def test_a_job_restricted_to_a_role_is_refused_to_others(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    plugin_dir: Path, users: UserStore,
) -> None:
    users.add("alice", "pw-alice-123")
    users.add("olga", "pw-olga-123", roles=("ops",))
    users.add("root", "pw-root-123", roles=("admin",))
    await make_runner(WARREN_RUNNER_JOBS=JOBS).start()

    alice = await Client.connect(edge.port, token_for("alice"))
    # A role in the token is not enough: the runner reads roles from the users table.
    mallory = await Client.connect(edge.port, token_for("mallory", roles=("ops",)))
    for client in (alice, mallory):
        run_id = await start_run(client, "acme_audit")
        events = await collect(client, run_id, until="run.error")
        assert events.errors[0]["code"] == "forbidden", events.errors
        assert events.errors[0]["message"] == (
            "acme_audit may be started only by users with the role 'ops' or 'admin'")
        assert events.queued is None
        client.close()

    for user in ("olga", "root"):
        client = await Client.connect(edge.port, token_for(user))
        run_id = await start_run(client, "acme_audit")
        events = await collect(client, run_id)
        assert events.errors == [] and events.lines() == ["audited"]
        assert events.finished is not None and events.finished["status"] == "completed"
        client.close()


async def test_a_replica_with_a_broken_job_module_refuses_to_start_and_others_go_on(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    plugin_dir: Path, amqp_url: str, database_url: str,
) -> None:
    await make_runner(WARREN_RUNNER_JOBS=JOBS).start()
    broken = make_runner(WARREN_RUNNER_JOBS=f"{JOBS},acme_broken_jobs:JOB")
    with pytest.raises(JobLoadError, match="WARREN_RUNNER_JOBS entry 'acme_broken_jobs:JOB' "
                                           "failed to load: ImportError: acme needs libfoo"):
        await broken.start()
    assert broken.manager is None  # it stopped before it consumed anything

    # As a process: it exits with the message, as `warren runner` prints it.
    process = RunnerProcess(runner_env(
        amqp_url, database_url, PYTHONPATH=str(plugin_dir),
        WARREN_RUNNER_JOBS="acme_broken_jobs:JOB",
    ))
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        await process.start()
    assert await process.exited() == 2
    assert process.messages(
        "warren runner: WARREN_RUNNER_JOBS entry 'acme_broken_jobs:JOB' failed to load: "
        "ImportError: acme needs libfoo"), process.tail()

    client = await Client.connect(edge.port, token_for("alice"))
    run_id = await start_run(client, "acme_words", {"text": "still here"})
    events = await collect(client, run_id)
    assert events.lines() == ["still", "here"]
    client.close()

"""Jobs and files: ``path`` arguments confined to the files directory, and job processes
of a root runner running as an unprivileged user (real runner, broker and children)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from shared.db.runs import RunStatus
from services.runner.manager import REPO_ROOT
from services.runner.output import Batch
from services.runner.process import ChildRun, ChildUser, Limits
from services.runner.server import RunnerServer
from services.runner.settings import _code_paths, _unreadable
from services.ws_edge.server import EdgeServer
from tests.support.client import Client
from tests.support.runner import collect, make_runner, start_run  # noqa: F401


def _world_dir(prefix: str) -> Path:
    """A directory any user may enter (pytest's own temporary directories are private)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def files() -> Iterator[Path]:
    """A files directory with a file, a subdirectory, links out of it, and a secret beside it."""
    base = _world_dir("warren-files-")
    root = base / "files"
    (root / "notes").mkdir(parents=True, mode=0o755)
    (root / "notes" / "today.txt").write_text("first\nsecond\n")
    (root / "notes" / "today.txt").chmod(0o644)
    (base / "secret.txt").write_text("secret\n")
    (root / "out").symlink_to(base / "secret.txt")
    (root / "root_only.txt").write_text("for root\n")
    (root / "root_only.txt").chmod(0o600)
    yield root
    shutil.rmtree(base)


async def test_path_arguments_name_files_inside_the_files_directory_only(
    edge: EdgeServer, make_runner: Callable[..., RunnerServer], token_for: Callable[..., str],
    files: Path,
) -> None:
    runner = make_runner(WARREN_RUNNER_FILES_DIR=str(files))
    await runner.start()
    client = await Client.connect(edge.port, token_for("alice"))
    bad = {
        "../../etc/passwd": "without '..'",
        "/etc/passwd": "must be a path relative to the files directory",
        str(files / "notes" / "today.txt"): "must be a path relative to the files directory",
        "out": "leads outside the files directory",
        "notes/../out": "without '..'",
        "nothing.txt": "no file 'nothing.txt'",
    }
    for n, (value, message) in enumerate(bad.items()):
        run_id = await start_run(client, "show_file", {"file": value}, ref=f"bad-{n}")
        refused = await collect(client, run_id, until="run.error")
        assert refused.errors[0]["code"] == "invalid_args", value
        assert refused.errors[0]["message"].startswith("file"), refused.errors[0]
        assert message in refused.errors[0]["message"], refused.errors[0]
    run_id = await start_run(client, "show_file", {"file": "notes/today.txt"}, ref="good")
    events = await collect(client, run_id)
    assert events.queued is not None and events.queued["args"]["file"] == "notes/today.txt"
    assert events.lines() == ["first", "second"]
    assert events.finished is not None and events.finished["status"] == "completed"
    client.close()


# -- a root runner's job processes -------------------------------------------------------

NOBODY = "nobody"
ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO_ROOT, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def child_python() -> Iterator[str]:
    """A Python with Warren's dependencies that ``nobody`` can start.

    The runner's own when it is readable by everyone (as in the image); otherwise (an
    interpreter under a private home) a virtual environment of the system's Python of
    the same version, pointed at the runner's site-packages.
    """
    if os.geteuid() != 0:
        pytest.skip("switching users needs a root runner")
    if _unreadable(ChildUser.lookup(NOBODY), _code_paths()) is None:
        yield sys.executable
        return
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        pytest.skip(f"{NOBODY} cannot start this Python, and there is no {system}")
    base = _world_dir("warren-child-python-")
    venv = base / "venv"
    assert os.spawnv(os.P_WAIT, str(system), [str(system), "-m", "venv", "--without-pip",
                                               str(venv)]) == 0
    site_packages = next((venv / "lib").glob("python*/site-packages"))
    ours = next(p for p in sys.path if p.endswith("site-packages"))
    (site_packages / "warren.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    yield str(venv / "bin" / "python")
    shutil.rmtree(base)


def _limits() -> Limits:
    return Limits(max_wall_s=30, max_line_chars=1000, max_output_bytes=1 << 20,
                  stop_grace_s=0.2, kill_grace_s=0.2, tail_lines=10, batch_lines=100,
                  batch_bytes=1 << 16, batch_interval_s=0.01)


async def _run(argv: list[str], user: ChildUser | None) -> tuple[RunStatus, list[str]]:
    published: list[Batch] = []

    async def publish(_seq: int, batch: Batch) -> None:
        published.append(batch)

    workdir = tempfile.mkdtemp(prefix="warren-run-test-")  # private to root, as the runner's
    try:
        child = ChildRun("run-1", argv, ENV, workdir, _limits(), publish, user=user)
        outcome = await child.run()
    finally:
        shutil.rmtree(workdir)
    return outcome.status, [line for batch in published for line in batch.lines]


async def test_a_root_runner_starts_job_processes_as_the_child_user(child_python: str) -> None:
    user = ChildUser.lookup(NOBODY)
    probe = ("import os; print(os.geteuid(), os.getuid(), os.getegid(), os.getgroups()); "
             "open('scratch', 'w').write('the working directory is ours')")
    status, lines = await _run([child_python, "-c", probe], user)
    assert status is RunStatus.COMPLETED, lines
    assert lines == [f"{user.uid} {user.uid} {user.gid} []"]


async def test_a_job_of_a_root_runner_cannot_read_what_only_root_can(
    child_python: str, files: Path
) -> None:
    user = ChildUser.lookup(NOBODY)

    def show(name: str) -> list[str]:
        context = {"files_dir": str(files), "orphan_grace_s": 1.0}
        return [child_python, "-m", "services.runner.child", "services.runner.jobs.show_file:JOB",
                orjson.dumps({"file": name}).decode(), orjson.dumps(context).decode()]

    status, lines = await _run(show("notes/today.txt"), user)
    assert (status, lines) == (RunStatus.COMPLETED, ["first", "second"])
    status, lines = await _run(show("root_only.txt"), user)
    assert status is RunStatus.FAILED and "PermissionError" in lines[-1], lines
    status, lines = await _run(show("root_only.txt"), None)  # the same job, as root
    assert (status, lines) == (RunStatus.COMPLETED, ["for root"])

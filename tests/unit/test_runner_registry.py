"""Finding the runner's jobs: entry points of installed distributions, WARREN_RUNNER_JOBS,
WARREN_RUNNER_JOBS_ENABLED, and every way a source can be broken.

The distributions are real: a ``*.dist-info`` directory with ``METADATA`` and
``entry_points.txt`` on ``sys.path``, which is what importlib.metadata reads for an
installed package. Warren's own distribution is installed too, so its jobs are found
beside them.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from shared.config import ConfigError
from services.runner import child
from services.runner.registry import ENTRY_POINT_GROUP, JobLoadError, discover_jobs, load_job
from services.runner.requests import Refused, check_roles
from services.runner.settings import RunnerSettings
from warren.jobs import Job, JobContext

BUILT_IN = {"countdown", "http_probe", "lines", "misbehave", "primes", "show_file"}
JOB_MODULE = '''
from warren import Job, JobContext, Param

def words(args, ctx: JobContext) -> None:
    for word in args["text"].split():
        print(word)

WORDS = Job("acme_words", "one word per line", words,
            params={"text": Param("str", "the text")}, roles=("ops",))
NOT_A_JOB = words
RENAMED = Job("acme_other", "a job under another entry point's name", words)
'''


class Site:
    """A directory on ``sys.path`` holding packages and their ``*.dist-info``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def module(self, name: str, source: str) -> None:
        package = self.root / name
        package.mkdir()
        (package / "__init__.py").write_text(textwrap.dedent(source))

    def distribution(self, name: str, entry_points: dict[str, str],
                     group: str = ENTRY_POINT_GROUP) -> None:
        info = self.root / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        lines = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield Site(tmp_path)
    for name in set(sys.modules) - before:
        if name.startswith("acme"):
            del sys.modules[name]


def test_the_built_in_jobs_are_entry_points_of_warren_itself() -> None:
    jobs = discover_jobs()
    assert set(jobs) == BUILT_IN
    assert jobs.reference("lines") == "services.runner.jobs.lines:JOB"
    assert "of the package warren " in jobs.source("lines")
    assert [job["name"] for job in jobs.describe()] == sorted(BUILT_IN)


def test_a_job_of_an_installed_package_is_found_with_its_roles(site: Site) -> None:
    site.module("acme_jobs", JOB_MODULE)
    site.distribution("acme-jobs", {"acme_words": "acme_jobs:WORDS"})
    jobs = discover_jobs()
    assert set(jobs) == BUILT_IN | {"acme_words"}
    assert jobs.reference("acme_words") == "acme_jobs:WORDS"
    assert jobs.source("acme_words") == (
        "entry point 'acme_words' (acme_jobs:WORDS) of the package acme-jobs 1.0")
    described = next(job for job in jobs.describe() if job["name"] == "acme_words")
    assert described == {"name": "acme_words", "description": "one word per line",
                         "args": {"text": {"kind": "str", "help": "the text"}}, "roles": ["ops"]}
    assert next(j for j in jobs.describe() if j["name"] == "lines")["roles"] is None
    # A run's child searches site-packages anyway, but not this test's directory.
    assert str(site.root) in jobs.import_paths()
    assert not any("site-packages" in path for path in jobs.import_paths())


def test_a_job_name_offered_twice_stops_the_start_naming_both_packages(site: Site) -> None:
    site.module("acme_jobs", JOB_MODULE)
    site.distribution("acme-jobs", {"lines": "acme_jobs:WORDS"})
    with pytest.raises(JobLoadError) as caught:
        discover_jobs()
    message = str(caught.value)
    assert "two sources offer the job 'lines'" in message
    assert "of the package warren " in message and "of the package acme-jobs 1.0" in message


def test_a_module_that_fails_to_import_stops_the_start_naming_the_package(site: Site) -> None:
    site.module("acme_broken", "raise RuntimeError('no database configured')\n")
    site.distribution("acme-broken", {"acme_words": "acme_broken:WORDS"})
    with pytest.raises(JobLoadError) as caught:
        discover_jobs()
    assert str(caught.value) == (
        "entry point 'acme_words' (acme_broken:WORDS) of the package acme-broken 1.0 failed "
        "to load: RuntimeError: no database configured")


@pytest.mark.parametrize(("value", "message"), [
    ("acme_jobs:NOT_A_JOB", "acme_jobs:NOT_A_JOB is a function, not a warren.Job"),
    ("acme_jobs:MISSING", "failed to load: AttributeError"),
    ("acme_missing:WORDS", "failed to load: ModuleNotFoundError: No module named 'acme_missing'"),
    ("acme_jobs", "'acme_jobs' is not a module:attribute reference"),
    ("acme_jobs:RENAMED", "names the job 'acme_other': an entry point of warren.jobs must be "
                          "named after its job"),
])
def test_an_entry_point_that_is_no_job_stops_the_start(site: Site, value: str,
                                                       message: str) -> None:
    site.module("acme_jobs", JOB_MODULE)
    site.distribution("acme-jobs", {"acme_words": value})
    with pytest.raises(JobLoadError) as caught:
        discover_jobs()
    assert "entry point 'acme_words'" in str(caught.value) and "acme-jobs 1.0" in str(caught.value)
    assert message in str(caught.value)


def test_enabled_keeps_only_the_named_jobs_and_skips_the_others_imports(site: Site) -> None:
    site.module("acme_broken", "raise RuntimeError('never imported')\n")
    site.distribution("acme-broken", {"acme_words": "acme_broken:WORDS"})
    jobs = discover_jobs(enabled={"countdown", "lines"})
    assert set(jobs) == {"countdown", "lines"}
    assert "acme_broken" not in sys.modules


def test_enabled_naming_an_unknown_job_stops_the_start() -> None:
    with pytest.raises(JobLoadError, match="WARREN_RUNNER_JOBS_ENABLED names countdwn, which no "
                                           "installed package offers"):
        discover_jobs(enabled={"countdown", "countdwn"})


def test_extra_references_add_jobs_of_modules_that_are_not_packaged(site: Site) -> None:
    site.module("acme_loose", JOB_MODULE)
    jobs = discover_jobs(["acme_loose:WORDS"])
    assert jobs["acme_words"].roles == ("ops",)
    assert jobs.source("acme_words") == "WARREN_RUNNER_JOBS entry 'acme_loose:WORDS'"
    assert str(site.root) in jobs.import_paths()
    only = discover_jobs(["acme_loose:WORDS"], enabled={"acme_words"})
    assert set(only) == {"acme_words"}


@pytest.mark.parametrize(("reference", "message"), [
    ("acme_loose:NOT_A_JOB",
     "WARREN_RUNNER_JOBS entry 'acme_loose:NOT_A_JOB': acme_loose:NOT_A_JOB is a function, "
     "not a warren.Job"),
    ("acme_loose:RENAMED", None),  # a name of its own is fine outside entry points
    ("services.runner.jobs.lines:JOB", "two sources offer the job 'lines'"),
])
def test_extra_references_are_checked_like_entry_points(site: Site, reference: str,
                                                        message: str | None) -> None:
    site.module("acme_loose", JOB_MODULE)
    if message is None:
        assert "acme_other" in discover_jobs([reference])
        return
    with pytest.raises(JobLoadError) as caught:
        discover_jobs([reference])
    assert message in str(caught.value)


def test_no_jobs_at_all_is_an_error(site: Site) -> None:
    with pytest.raises(JobLoadError, match="no jobs found"):
        discover_jobs(group="acme.nothing")


def test_settings_read_the_references_and_the_enabled_names() -> None:
    settings = RunnerSettings.from_env({
        "WARREN_RUNNER_JOBS": "acme.jobs:WORDS, acme.jobs:Jobs.COUNT",
        "WARREN_RUNNER_JOBS_ENABLED": "lines,acme_words",
    })
    assert settings.job_references == ("acme.jobs:WORDS", "acme.jobs:Jobs.COUNT")
    assert settings.jobs_enabled == frozenset({"lines", "acme_words"})
    defaults = RunnerSettings.from_env({})
    assert defaults.job_references == () and defaults.jobs_enabled is None


@pytest.mark.parametrize(("env", "message"), [
    ({"WARREN_RUNNER_JOBS": "acme/jobs.py"}, "'acme/jobs.py' is not a module:attribute"),
    ({"WARREN_RUNNER_JOBS": "acme.jobs"}, "'acme.jobs' is not a module:attribute"),
    ({"WARREN_RUNNER_JOBS_ENABLED": "lines,rm -rf"}, "'rm -rf' is not a job name"),
])
def test_malformed_job_settings_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        RunnerSettings.from_env(env)
    assert message in str(caught.value)


def _noop(_args: dict[str, object], _ctx: JobContext) -> None:
    return None


@pytest.mark.parametrize(("name", "roles"), [
    ("two words", None), ("", None), ("x" * 65, None), ("ok", "ops"), ("ok", ["ops"]),
    ("ok", ("ops", "bad role")),
])
def test_a_job_with_a_bad_name_or_roles_cannot_be_made(name: str, roles: object) -> None:
    with pytest.raises(ValueError):
        Job(name, "d", _noop, roles=roles)  # type: ignore[arg-type]


def test_roles_decide_who_may_start_a_job() -> None:
    everyone = Job("open", "d", _noop)
    ops_only = Job("ops_only", "d", _noop, roles=("ops", "sre"))
    admins_only = Job("admins_only", "d", _noop, roles=())
    check_roles(everyone, (), "admin")
    check_roles(ops_only, ("sre",), "admin")
    check_roles(ops_only, ("admin",), "admin")
    check_roles(admins_only, ("root",), "root")
    for job, roles in ((ops_only, ("dev",)), (ops_only, ("admin",)), (admins_only, ("ops",))):
        with pytest.raises(Refused) as caught:
            check_roles(job, roles, "root")
        assert caught.value.code == "forbidden"
    with pytest.raises(Refused, match="ops_only may be started only by users with the role "
                                      "'ops' or 'sre' or 'root'"):
        check_roles(ops_only, (), "root")


def test_the_child_loads_its_job_by_reference_and_checks_the_name(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    site.module("acme_jobs", JOB_MODULE)
    assert load_job("acme_jobs:WORDS").name == "acme_words"
    with pytest.raises(TypeError, match="not a warren.Job"):
        load_job("acme_jobs:NOT_A_JOB")
    context = orjson.dumps({"job": "acme_renamed"}).decode()
    assert child.main(["child", "acme_jobs:WORDS", "{}", context]) == child.EXIT_BAD_INPUT
    assert "acme_jobs:WORDS is the job 'acme_words' now, not 'acme_renamed'" in (
        capsys.readouterr().err)
    assert child.main(["child", "acme_gone:WORDS", "{}", "{}"]) == child.EXIT_FAILED
    assert "No module named 'acme_gone'" in capsys.readouterr().err

"""Job argument schemas and the start/stop request parsers: pure logic."""

from __future__ import annotations

import threading

import pytest

from services.runner.registry import discover_jobs
from services.runner.requests import Refused, parse_start, parse_stop
from warren.jobs import ArgsError, JobContext

JOBS = discover_jobs()  # the built-in jobs, through the entry points of the installed package


def test_every_job_has_a_description_and_valid_defaults() -> None:
    assert {"countdown", "primes", "http_probe", "lines", "misbehave", "show_file"} <= set(JOBS)
    for job in JOBS.values():
        assert job.description
        if not any(p.required for p in job.params.values()):
            job.validate({})  # the defaults pass the job's own schema
        assert job.describe()["name"] == job.name


@pytest.mark.parametrize(
    ("job", "args", "message"),
    [
        ("countdown", {"start": 1.5}, "start must be an integer, got 1.5"),
        ("countdown", {"start": True}, "start must be an integer, got True"),
        ("countdown", {"interval_s": "1"}, "interval_s must be a number"),
        ("countdown", {"interval_s": 61}, "interval_s must be at most 60"),
        ("lines", {"stream": "stdin"}, "stream must be one of stdout, stderr"),
        ("lines", {"stamp": 1}, "stamp must be true or false"),
        ("http_probe", {"resources": []}, "resources must not be empty"),
        ("http_probe", {"resources": [1]}, "resources must be a list of strings"),
        ("http_probe", {"resources": ["//evil.example/"]}, "must be paths starting with '/'"),
        ("http_probe", {"resources": ["/a"] * 51}, "at most 50"),
        ("primes", {"limit": "big"}, "limit must be an integer"),
        ("countdown", "start=3", "args must be a JSON object"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(
    job: str, args: object, message: str
) -> None:
    with pytest.raises(ArgsError, match=None) as caught:
        JOBS[job].validate(args)
    assert message in str(caught.value)


def test_defaults_are_filled_in_and_none_means_no_args() -> None:
    assert JOBS["countdown"].validate(None) == {"start": 10, "interval_s": 1.0}
    assert JOBS["countdown"].validate({"interval_s": 0}) == {"start": 10, "interval_s": 0.0}


def test_parse_start_codes() -> None:
    def code(data: dict[str, object], **kw: object) -> str:
        options = {"max_args_bytes": 100, "http_configured": True, **kw}
        with pytest.raises(Refused) as caught:
            parse_start(data, JOBS, **options)  # type: ignore[arg-type]
        return caught.value.code

    assert code({}) == "invalid_request"
    assert code({"job": ""}) == "invalid_request"
    assert code({"job": "rm -rf"}) == "unknown_job"
    assert code({"job": "countdown", "args": {"start": "x"}}) == "invalid_args"
    assert code({"job": "countdown", "args": {"x": "y" * 200}}) == "args_too_large"
    assert code({"job": "http_probe"}, http_configured=False) == "job_unavailable"
    request = parse_start({"job": "countdown", "args": {"start": 3}}, JOBS,
                          max_args_bytes=100, http_configured=False)
    assert request.job.name == "countdown" and request.args["start"] == 3


def test_parse_stop() -> None:
    assert parse_stop({"run_id": "abc"}) == "abc"
    for data in ({}, {"run_id": ""}, {"run_id": 5}, {"run_id": "x" * 129}):
        with pytest.raises(Refused) as caught:
            parse_stop(data)
        assert caught.value.code == "invalid_request"


def test_countdown_ends_early_once_stop_is_asked(capsys: pytest.CaptureFixture[str]) -> None:
    stop = threading.Event()
    stop.set()
    JOBS["countdown"].run({"start": 5, "interval_s": 0}, JobContext(stop))
    assert capsys.readouterr().out == "stopped at 5\n"

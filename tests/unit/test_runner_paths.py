"""The ``path`` parameter kind: a file inside the files directory, and nothing else.

Real files and symbolic links in a temporary directory; no broker, no child process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.runner.jobs import countdown, show_file
from services.runner.requests import Refused, parse_start
from warren.jobs import ArgsError, Job, JobContext, Param
from warren.params import MAX_NAME_BYTES, MAX_PATH_CHARS

JOBS = {job.name: job for job in (countdown.JOB, show_file.JOB)}


def _noop(_args: dict[str, object], _ctx: JobContext) -> None:
    return None


READER = Job("reader", "reads a file", _noop, params={"file": Param("path", "the file")})


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A files directory next to a secret; links inside lead in and out of it."""
    root = tmp_path / "files"
    (root / "notes").mkdir(parents=True)
    (root / "notes" / "today.txt").write_text("hello\n")
    (root / "top.txt").write_text("top\n")
    (tmp_path / "secret.txt").write_text("secret\n")
    (root / "out").symlink_to(tmp_path / "secret.txt")
    (root / "outdir").symlink_to(tmp_path)
    (root / "abs_out").symlink_to("/etc/passwd")
    (root / "in").symlink_to(root / "notes" / "today.txt")
    (root / "loop").symlink_to(root / "loop")
    return root


def _refusal(files_dir: Path | None, value: object) -> str:
    with pytest.raises(ArgsError) as caught:
        READER.validate({"file": value}, files_dir)
    message = str(caught.value)
    assert message.startswith("file"), message  # names the parameter
    return message


@pytest.mark.parametrize("value", ["top.txt", "notes/today.txt", "./notes//today.txt", "in"])
def test_a_file_inside_is_accepted_and_located(files: Path, value: str) -> None:
    args = READER.validate({"file": value}, files)
    assert args == {"file": value}  # stored and shown as given
    located = READER.located(args, files)["file"]
    assert isinstance(located, Path) and located.is_absolute()
    assert located.is_relative_to(files.resolve()) and located.is_file()


def test_a_link_inside_is_located_at_its_target(files: Path) -> None:
    located = READER.located(READER.validate({"file": "in"}, files), files)["file"]
    assert located == (files / "notes" / "today.txt").resolve()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../../etc/passwd", "without '..'"),
        ("notes/../../secret.txt", "without '..'"),
        ("..", "without '..'"),
        ("/etc/passwd", "must be a path relative to the files directory"),
        ("/", "must be a path relative to the files directory"),
        ("out", "leads outside the files directory"),
        ("outdir/secret.txt", "leads outside the files directory"),
        ("abs_out", "leads outside the files directory"),
        ("loop", "cannot be resolved"),
        ("top.txt/x", "cannot be resolved"),
        ("missing.txt", "no file 'missing.txt'"),
        ("notes", "is not a file"),
        (".", "is not a file"),
        ("", "of 1 to 1024 characters"),
        ("top.txt\0.png", "without NUL"),
        ("x" * (MAX_NAME_BYTES + 1), f"longer than {MAX_NAME_BYTES} bytes"),
        ("é" * 128, f"longer than {MAX_NAME_BYTES} bytes"),  # 256 bytes in UTF-8
        ("a/" * (MAX_PATH_CHARS // 2 + 1), "of 1 to 1024 characters"),
        ("\ud800", "must be valid text"),
        (7, "must be a path relative to the files directory, got 7"),
        (["top.txt"], "must be a path relative"),
        (None, "must be a path relative"),
    ],
)
def test_anything_else_is_refused_naming_the_parameter(
    files: Path, value: object, message: str
) -> None:
    assert message in _refusal(files, value)


def test_the_absolute_path_of_a_file_inside_is_refused_too(files: Path) -> None:
    assert "relative" in _refusal(files, str(files / "top.txt"))


def test_the_files_directory_itself_may_be_a_link(files: Path, tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(files)
    assert READER.validate({"file": "top.txt"}, link) == {"file": "top.txt"}
    assert "leads outside" in _refusal(link, "out")


def test_without_a_files_directory_nothing_is_located(tmp_path: Path) -> None:
    assert "no files directory" in _refusal(None, "top.txt")
    assert "files directory is missing" in _refusal(tmp_path / "nowhere", "top.txt")


def test_the_file_is_checked_again_when_located(files: Path) -> None:
    args = READER.validate({"file": "top.txt"}, files)
    os.unlink(files / "top.txt")
    (files / "top.txt").symlink_to(files.parent / "secret.txt")
    with pytest.raises(ArgsError, match="leads outside"):
        READER.located(args, files)


def test_a_path_parameter_has_no_default() -> None:
    with pytest.raises(ValueError, match="no default"):
        Param("path", "the file", default="x.txt")


def test_the_schema_describes_the_kind() -> None:
    described = JOBS["show_file"].describe()
    assert described["args"]["file"] == {
        "kind": "path", "help": "a file in the runner's files directory, e.g. 'notes/today.txt'"
    }
    assert JOBS["show_file"].needs_files and not JOBS["countdown"].needs_files


def test_parse_start_refuses_bad_paths_and_jobs_without_a_files_directory(files: Path) -> None:
    def refused(args: dict[str, object], files_dir: Path | None) -> Refused:
        with pytest.raises(Refused) as caught:
            parse_start({"job": "show_file", "args": args}, JOBS, max_args_bytes=8192,
                        http_configured=False, files_dir=files_dir)
        return caught.value

    error = refused({"file": "../../etc/passwd"}, files)
    assert error.code == "invalid_args" and error.message.startswith("file ")
    assert refused({"file": "top.txt"}, None).code == "job_unavailable"
    request = parse_start({"job": "show_file", "args": {"file": "top.txt"}}, JOBS,
                          max_args_bytes=8192, http_configured=False, files_dir=files)
    assert request.args == {"file": "top.txt", "max_lines": 10_000}

"""Argument schemas: the parameters a job (or a report) declares, and their checks.

Every value a user sends is checked against the declared :class:`Param` before any
code of the extension sees it; a value that does not fit is an :class:`ArgsError` whose
message names the parameter, which the services send back as ``invalid_args``.

A ``path`` argument names a file in the runner's files directory
(``WARREN_RUNNER_FILES_DIR``) and nothing else: a ``str`` argument that a job opens
would let any signed-in user read whatever the job process can read. The value stays
the name the user gave (it is stored and shown with the run); the job gets the resolved
absolute :class:`~pathlib.Path`.

A ``json`` argument is any JSON value, bounded by ``max_bytes`` (its encoded size) and
``max_length`` (items of a list or object); what is inside is the extension's to check.
``date`` and ``datetime`` arguments are ISO 8601 text (a ``datetime`` may be a date
alone) and stay text, as JSON carries them.

:func:`describe` gives a schema as plain JSON, with every limit, and :func:`schema_from`
turns such a description back into parameters: a service that has only the description
(the edge, from the catalogue) checks a request with the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

import orjson


class ArgsError(ValueError):
    """The arguments do not fit the job's schema; the message says which and why."""


_REQUIRED: Final = object()
KINDS: Final = ("int", "float", "str", "bool", "str_list", "path", "json", "date", "datetime")
MAX_DATE_CHARS: Final = 40  # of a date or datetime argument
MAX_PATH_CHARS: Final = 1024  # of a path argument
MAX_NAME_BYTES: Final = 255  # of each of its parts, as Linux file systems allow


@dataclass(frozen=True, slots=True)
class Param:
    kind: str
    help: str
    default: Any = _REQUIRED
    minimum: float | None = None
    maximum: float | None = None
    max_length: int | None = None  # characters of a str, items of a str_list or json
    choices: tuple[str, ...] = ()  # of a str, or of each item of a str_list
    max_bytes: int | None = None  # of a json argument, encoded

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameter kind {self.kind!r}")
        if self.kind == "path" and not self.required:
            raise ValueError("a path parameter has no default: the files directory varies")
        if self.max_bytes is not None and self.kind != "json":
            raise ValueError("max_bytes bounds a json parameter only")
        bounded = self.minimum is not None or self.maximum is not None
        if bounded and self.kind not in ("int", "float"):
            raise ValueError("minimum and maximum bound a number parameter only")

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def check(self, name: str, value: Any, files_dir: Path | None = None) -> Any:
        kind = self.kind
        if kind == "path":
            locate(name, value, files_dir)
            return value
        if kind == "int":
            if type(value) is not int:
                raise ArgsError(f"{name} must be an integer, got {_show(value)}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ArgsError(f"{name} must be a number, got {_show(value)}")
            value = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ArgsError(f"{name} must be true or false, got {_show(value)}")
        elif kind == "str":
            if not isinstance(value, str):
                raise ArgsError(f"{name} must be a string, got {_show(value)}")
            if self.choices and value not in self.choices:
                raise ArgsError(f"{name} must be one of {', '.join(self.choices)}, got {value!r}")
        elif kind == "json":
            self._check_json(name, value)
        elif kind in ("date", "datetime"):
            parse = date.fromisoformat if kind == "date" else datetime.fromisoformat
            if (not isinstance(value, str) or len(value) > MAX_DATE_CHARS
                    or not _parses(parse, value)):
                what = "an ISO date" if kind == "date" else "an ISO date or date-time"
                raise ArgsError(f"{name} must be {what}, got {_show(value)}")
        else:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ArgsError(f"{name} must be a list of strings, got {_show(value)}")
            if not value:
                raise ArgsError(f"{name} must not be empty")
            if self.choices and not set(value) <= set(self.choices):
                raise ArgsError(f"{name} must hold only {', '.join(self.choices)}, "
                                f"got {_show(value)}")
        if self.minimum is not None and value < self.minimum:
            raise ArgsError(f"{name} must be at least {_number(self.minimum)}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ArgsError(f"{name} must be at most {_number(self.maximum)}, got {value}")
        if self.max_length is not None and len(value) > self.max_length:
            raise ArgsError(f"{name} must have at most {self.max_length} items/characters")
        return value

    def _check_json(self, name: str, value: Any) -> None:
        if self.max_bytes is not None:
            try:
                size = len(orjson.dumps(value))
            except (TypeError, orjson.JSONEncodeError):
                raise ArgsError(f"{name} must be a JSON value, got {_show(value)}") from None
            if size > self.max_bytes:
                raise ArgsError(f"{name} must be at most {self.max_bytes} bytes as JSON, "
                                f"got {size}")
        if self.max_length is not None and not isinstance(value, (list, dict, str)):
            raise ArgsError(f"{name} must be a list, got {_show(value)}")


def locate(name: str, value: object, files_dir: Path | None) -> Path:
    """The file that the ``path`` argument ``name`` names, resolved; :class:`ArgsError` if
    it is not a file inside ``files_dir``, after following every symbolic link."""
    where = "a path relative to the files directory"
    if not isinstance(value, str):
        raise ArgsError(f"{name} must be {where}, got {_show(value)}")
    if files_dir is None:
        raise ArgsError(f"{name}: this runner has no files directory")
    if not value or "\0" in value or len(value) > MAX_PATH_CHARS:
        raise ArgsError(f"{name} must be {where} of 1 to {MAX_PATH_CHARS} characters without "
                        f"NUL, got {_show(value)}")
    try:
        parts = PurePosixPath(value).parts
        too_long = any(len(part.encode()) > MAX_NAME_BYTES for part in parts)
    except UnicodeEncodeError:
        raise ArgsError(f"{name} must be valid text, got {_show(value)}") from None
    if too_long:
        raise ArgsError(f"{name} has a part longer than {MAX_NAME_BYTES} bytes")
    if PurePosixPath(value).is_absolute() or ".." in parts:
        raise ArgsError(f"{name} must be {where}, without '..', got {_show(value)}")
    try:
        root = files_dir.resolve(strict=True)
    except OSError:
        raise ArgsError(f"{name}: the runner's files directory is missing") from None
    try:
        target = (root / value).resolve(strict=True)
    except FileNotFoundError:
        raise ArgsError(f"{name}: no file {_show(value)} in the files directory") from None
    except (OSError, RuntimeError):  # a symbolic-link loop, a part that is not a directory
        raise ArgsError(f"{name}: {_show(value)} cannot be resolved") from None
    if not target.is_relative_to(root):
        raise ArgsError(f"{name}: {_show(value)} leads outside the files directory")
    if not target.is_file():
        raise ArgsError(f"{name}: {_show(value)} is not a file")
    return target


def _parses(parse: Any, text: str) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _number(value: float) -> str:
    """A bound as people write it: 1000000, not 1e+06."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate(params: Mapping[str, Param], raw: object, owner: str,
             files_dir: Path | None = None) -> dict[str, Any]:
    """``raw`` checked against ``params`` (of the job or report ``owner``), with defaults
    filled in; :class:`ArgsError` on any problem. ``path`` arguments keep the name given."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ArgsError(f"args must be a JSON object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(params))
    if unknown:
        allowed = ", ".join(sorted(params)) or "none"
        raise ArgsError(
            f"unknown argument(s) {', '.join(map(repr, unknown))[:200]} for {owner} "
            f"(allowed: {allowed})"
        )
    args: dict[str, Any] = {}
    for name, param in params.items():
        if name in raw and not (raw[name] is None and param.default is None):
            args[name] = param.check(name, raw[name], files_dir)
        elif param.required:
            raise ArgsError(f"{owner} needs the argument {name!r}: {param.help}")
        else:
            args[name] = param.default
    return args


_LIMITS: Final = ("minimum", "maximum", "max_length", "max_bytes")


def describe(params: Mapping[str, Param]) -> dict[str, dict[str, Any]]:
    """The schema as clients see it (the console builds its forms from it): each
    parameter's kind, help, default (if any) and the limits it declares."""
    described: dict[str, dict[str, Any]] = {}
    for name, p in params.items():
        entry: dict[str, Any] = {"kind": p.kind, "help": p.help}
        if not p.required:
            entry["default"] = p.default
        entry.update({key: getattr(p, key) for key in _LIMITS if getattr(p, key) is not None})
        if p.choices:
            entry["choices"] = list(p.choices)
        described[name] = entry
    return described


def schema_from(described: object) -> dict[str, Param]:
    """The parameters that :func:`describe` described; :class:`ValueError` saying what is
    wrong if ``described`` is not such a description."""
    if not isinstance(described, dict):
        raise ValueError("a schema must be an object of parameters")
    known = {f.name for f in fields(Param)}
    params: dict[str, Param] = {}
    for name, entry in described.items():
        if not isinstance(name, str) or not isinstance(entry, dict):
            raise ValueError(f"parameter {_show(name)} must be an object")
        unknown = sorted(set(entry) - known)
        texts = all(isinstance(entry.get(key), str) for key in ("kind", "help"))
        if unknown or not texts:
            raise ValueError(f"parameter {name!r} needs a kind and a help text and nothing but "
                             f"{', '.join(sorted(known))}")
        values = dict(entry)
        if "choices" in values:
            choices = values["choices"]
            if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"parameter {name!r}: choices must be a list of strings")
            values["choices"] = tuple(choices)
        for key in _LIMITS:
            limit = values.get(key)
            if limit is not None and (
                isinstance(limit, bool) or not isinstance(limit, (int, float))
            ):
                raise ValueError(f"parameter {name!r}: {key} must be a number")
        params[name] = Param(**values)
    return params

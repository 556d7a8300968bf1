"""The report API: a name, a description, a parameter schema and a function that makes a table.

A report's function receives the validated parameters and a :class:`ReportContext`, and
returns a :class:`Table`: its columns, then its rows as an iterable that is read once,
row by row, while the sheet is written. A generator over a database cursor therefore
streams: openpyxl's write-only mode writes each row as it arrives, and no more than one
row is held at a time, whatever the number of rows.

The function runs in the build's own child process, so it may block (a database query,
a file); it is not run on any event loop. Each row must match the columns: as many
values as columns, each ``None`` or of its column's type (``date`` and ``datetime``
columns also take ISO 8601 text). A row that does not match ends the build with
``excel.failed`` ``invalid_row`` naming the row; an exception the function raises fails
the attempt, which is retried like any failed build.

Parameters are checked against the schema before the report runs: by the edge, which
answers a bad request at once, and again by the worker. Every report also takes
``title`` (the workbook's title), which Warren declares for it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from warren.params import ArgsError, Param, describe, validate

__all__ = [
    "ArgsError", "Column", "ColumnType", "Param", "Report", "ReportContext", "ReportFunction",
    "Table",
]

# A report's name is stored with each of its tasks (at most 32 characters there).
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
ROLE_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TITLE_LENGTH: Final = 100
TITLE: Final = Param("str", "the workbook's title", default=None, max_length=MAX_TITLE_LENGTH)


class ColumnType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    DATE = "date"
    DATETIME = "datetime"
    BOOLEAN = "boolean"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, the type of its values, and optionally its look."""

    name: str
    type: ColumnType = ColumnType.STRING
    width: float | None = None  # None: fitted to the type and the header
    number_format: str | None = None  # None: the type's (``#,##0``, ``yyyy-mm-dd``…); "": General

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a column needs a name, got {self.name!r}")
        # A plain string ("integer") is accepted for the type, and kept as the enum.
        object.__setattr__(self, "type", ColumnType(self.type))


@dataclass(frozen=True, slots=True)
class Table:
    """What a report's function returns: the columns, then the rows, read lazily."""

    columns: Sequence[Column]
    rows: Iterable[Sequence[Any]]
    total: int | None = None  # how many rows to expect, for progress; None if not known


@dataclass(frozen=True, slots=True)
class ReportContext:
    """What a running report may use besides its parameters.

    ``user_id`` is the verified requester: a report that lists someone's data lists
    theirs. ``warren_database_url`` is Warren's own database, whose tables are internal;
    Warren's ``activity`` report reads it. A report over the application's own data
    opens its own connection, with its own settings.
    """

    user_id: str
    task_id: str
    warren_database_url: str = ""


ReportFunction = Callable[[dict[str, Any], ReportContext], Table]


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    description: str
    build: ReportFunction
    params: Mapping[str, Param] = field(default_factory=dict)
    check: Callable[[dict[str, Any]], None] | None = None  # cross-parameter rules
    # Who may ask for it: None lets every signed-in user; otherwise users holding one of
    # these roles (users with the deployment's admin role always may).
    roles: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(f"report name {self.name!r} must be 1 to 32 letters, digits, "
                             f"'_' or '-'")
        if "title" in self.params:
            raise ValueError(f"report {self.name}: 'title' is Warren's own parameter of "
                             f"every report")
        roles = self.roles
        if roles is not None and (
            not isinstance(roles, tuple)
            or not all(isinstance(r, str) and ROLE_PATTERN.fullmatch(r) for r in roles)
        ):
            raise ValueError(f"report {self.name}: roles must be None or a tuple of role names "
                             f"(letters, digits, '_' or '-'), got {roles!r}")

    @property
    def schema(self) -> dict[str, Param]:
        """The declared parameters and Warren's ``title``."""
        return {**self.params, "title": TITLE}

    def allows(self, roles: Collection[str], admin_role: str) -> bool:
        """Whether a user holding ``roles`` may ask for this report."""
        return self.roles is None or admin_role in roles or not set(self.roles).isdisjoint(roles)

    def validate(self, raw: object) -> dict[str, Any]:
        """The parameters with defaults filled in; :class:`ArgsError` on any problem."""
        params = validate(self.schema, raw, self.name)
        if self.check is not None:
            self.check(params)
        return params

    def with_limits(self, maxima: Mapping[str, int]) -> Report:
        """This report with the named parameters bounded by the deployment's limits: a
        number's maximum (and a default above it lowered to it), or the items of a list."""
        params = dict(self.params)
        for name, most in maxima.items():
            param = params.get(name)
            if param is None:
                continue
            if param.kind in ("int", "float"):
                default = param.default
                if not param.required and isinstance(default, (int, float)) and default > most:
                    default = most
                params[name] = dataclasses.replace(param, maximum=most, default=default)
            else:
                params[name] = dataclasses.replace(param, max_length=most)
        return dataclasses.replace(self, params=params)

    def describe(self) -> dict[str, Any]:
        """The report as clients see it; ``roles`` is None when every signed-in user may
        ask for it. ``params`` has the same form as a job's ``args``."""
        return {"name": self.name, "description": self.description,
                "params": describe(self.schema),
                "roles": None if self.roles is None else list(self.roles)}

"""What an ``excel.create`` request may ask for, checked before anything is built.

A request is ``{"report": <name>, "params": {...}}``; the report declares its parameter
schema (``warren.reports``). Pure functions over JSON, used by the edge (it answers a bad
request at once: HTTP 400, or an ``error`` frame) and by the worker (which checks again,
with the report's own cross-parameter rules, since a command may come from anywhere).

The edge does not import report code: :func:`validate_request` takes the reports'
descriptions, the dicts ``Report.describe()`` returns, as the catalogue carries them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from warren.params import ArgsError, schema_from, validate
from warren.reports import Report

MAX_RECORDED_PARAMS: Final = 1 << 20
MAX_KIND_LENGTH: Final = 32  # export_tasks.kind


class InvalidRequest(ValueError):
    """A request that can never be built; ``code`` is the stable reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RequestForbidden(InvalidRequest):
    """The report declares roles, and the requester holds none of them."""

    def __init__(self, message: str) -> None:
        super().__init__("forbidden", message)


@dataclass(frozen=True, slots=True)
class ExportRequest:
    report: str
    params: dict[str, Any]  # validated, defaults filled in, JSON-serialisable


def _split(data: object, offered: Collection[str]) -> tuple[str, object]:
    """The report name (one of ``offered``) and the raw params of a request."""
    if not isinstance(data, dict):
        raise InvalidRequest("invalid_params", "data must be an object")
    report = data.get("report")
    if not isinstance(report, str) or report not in offered:
        names = ", ".join(sorted(offered)) or "none"
        raise InvalidRequest(
            "unknown_report", f"report must be one of {names}, got {str(report)[:64]!r}"
        )
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise InvalidRequest("invalid_params", "params must be an object")
    return report, params


def validate_request(
    descriptions: Iterable[Mapping[str, Any]], data: object, *,
    roles: Collection[str] | None = None, admin_role: str = "",
) -> ExportRequest:
    """Check a request against the described reports' schemas (and, given the
    requester's ``roles``, each report's roles); raise :class:`InvalidRequest` saying what
    is wrong. A report's cross-parameter rules are the worker's to check.

    A report whose schema cannot be read is ``unknown_report``.
    """
    described = {d["name"]: d for d in descriptions}
    report, raw = _split(data, described)
    description = described[report]
    allowed = description.get("roles")
    if roles is not None and allowed is not None and admin_role not in roles \
            and set(allowed).isdisjoint(roles):
        who = " or ".join(repr(role) for role in (*allowed, admin_role) if role)
        raise RequestForbidden(f"the report {report} is only for users with the role {who}")
    try:
        schema = schema_from(description.get("params"))
    except ValueError as exc:
        raise InvalidRequest("unknown_report", f"the report {report} is described with a "
                             f"schema that cannot be read: {exc}") from None
    try:
        params = validate(schema, raw, report)
    except ArgsError as exc:
        raise InvalidRequest("invalid_params", str(exc)) from None
    return ExportRequest(report, params)


def parse_request(reports: Mapping[str, Report], data: object) -> ExportRequest:
    """Check a request against the offered reports, their cross-parameter rules included;
    raise :class:`InvalidRequest` saying what is wrong."""
    report, raw = _split(data, reports)
    try:
        return ExportRequest(report, reports[report].validate(raw))
    except ArgsError as exc:
        raise InvalidRequest("invalid_params", str(exc)) from None


def as_refused(data: object) -> tuple[str, dict[str, Any]]:
    """The report name and params to record for a refused request, as it was sent.

    Params that are not an object, or too large to keep, are replaced by a marker.
    """
    raw = data if isinstance(data, dict) else {}
    report = raw.get("report")
    kind = report[:MAX_KIND_LENGTH] if isinstance(report, str) else "?"
    params = raw.get("params", {})
    if not isinstance(params, dict) or len(orjson.dumps(params)) > MAX_RECORDED_PARAMS:
        return kind, {"omitted": True}
    return kind, params

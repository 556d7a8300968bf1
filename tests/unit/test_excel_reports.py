"""The report API (``warren.reports``), finding reports (``warren.reports`` entry points,
WARREN_EXCEL_REPORTS, WARREN_EXCEL_REPORTS_ENABLED), checking requests against reports or
their descriptions, and a report's build in the child's code, run in this process.

The distributions are real ``*.dist-info`` directories on ``sys.path``
(tests/support/site.py); Warren's own distribution is installed too, so its three
reports are found beside them.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from shared.config import ConfigError
from shared.exports.requests import (
    InvalidRequest,
    RequestForbidden,
    parse_request,
    validate_request,
)
from shared.exports.settings import Limits
from services.excel_worker.build import BuildJob, run_job
from services.excel_worker.registry import (
    ENTRY_POINT_GROUP,
    ReportLoadError,
    discover_reports,
    load_report,
)
from services.excel_worker.settings import ExcelSettings
from services.excel_worker.sheet import PROGRESS_EVERY
from tests.support.site import Site, site_on_path
from warren import ArgsError, Column, Param, Report, ReportContext, Table
from warren.params import describe, schema_from

BUILT_IN = {"activity", "sample", "table"}
LIMITS = Limits(max_sample_rows=1000, max_table_rows=3, max_table_columns=2, max_activity_rows=50)
REPORTS_MODULE = '''
from warren import Column, Param, Report, Table

def numbers(params, ctx):
    rows = ([i, f"n{i}"] for i in range(params["count"]))
    return Table([Column("n", "integer"), Column("name")], rows)

NUMBERS = Report("acme_numbers", "counted rows", numbers,
                 params={"count": Param("int", "how many", default=3, maximum=10)},
                 roles=("ops",))
NOT_A_REPORT = numbers
'''


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Site]:
    with site_on_path(tmp_path / "site", monkeypatch, "acme") as site:
        site.root.mkdir()
        yield site


def _build(params: dict[str, Any], context: ReportContext) -> Table:
    return Table([Column("x")], iter([["a"]]))


# -- the report API -------------------------------------------------------------------


def test_a_report_describes_its_schema_with_limits_title_and_roles() -> None:
    report = Report("orders", "the orders", _build, roles=("sales",), params={
        "since": Param("date", "from this day", default=None),
        "region": Param("str", "where", choices=("north", "south")),
        "rows": Param("json", "raw rows", max_length=5, max_bytes=100),
    })
    assert report.describe() == {
        "name": "orders", "description": "the orders", "roles": ["sales"],
        "params": {
            "since": {"kind": "date", "help": "from this day", "default": None},
            "region": {"kind": "str", "help": "where", "choices": ["north", "south"]},
            "rows": {"kind": "json", "help": "raw rows", "max_length": 5, "max_bytes": 100},
            "title": {"kind": "str", "help": "the workbook's title", "default": None,
                      "max_length": 100},
        },
    }
    # A description is enough to check a request with the same rules.
    assert schema_from(report.describe()["params"]) == report.schema
    assert report.validate({"region": "north", "rows": [1], "since": "2024-05-01"}) == {
        "since": "2024-05-01", "region": "north", "rows": [1], "title": None}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"region": "east", "rows": []}, "region must be one of north, south"),
        ({"region": "north", "rows": list(range(6))}, "rows must have at most 5 items"),
        ({"region": "north", "rows": ["x" * 100]}, "rows must be at most 100 bytes"),
        ({"region": "north", "rows": 3}, "rows must be a list"),
        ({"region": "north", "rows": [], "since": "May"}, "since must be an ISO date"),
        ({"region": "north", "rows": [], "title": "t" * 101}, "title must have at most 100"),
        ({"rows": []}, "needs the argument 'region'"),
    ],
)
def test_a_report_refuses_parameters_naming_the_field(raw: dict[str, Any], fragment: str) -> None:
    report = Report("orders", "the orders", _build, params={
        "since": Param("date", "from this day", default=None),
        "region": Param("str", "where", choices=("north", "south")),
        "rows": Param("json", "raw rows", max_length=5, max_bytes=100),
    })
    with pytest.raises(ArgsError, match=fragment):
        report.validate(raw)


@pytest.mark.parametrize(
    ("name", "params", "roles"),
    [("", {}, None), ("a" * 33, {}, None), ("a b", {}, None), ("ok", {"title": Param("str", "")}, None),
     ("ok", {}, ("bad role",)), ("ok", {}, ["ops"])],
)
def test_a_report_with_a_bad_name_params_or_roles_cannot_be_made(
    name: str, params: dict[str, Param], roles: Any,
) -> None:
    with pytest.raises(ValueError):
        Report(name, "", _build, params=params, roles=roles)


def test_with_limits_bounds_numbers_and_lists_and_lowers_defaults() -> None:
    report = Report("r", "", _build, params={
        "count": Param("int", "", default=100, minimum=1, maximum=1000),
        "items": Param("json", "", max_length=50),
        "other": Param("int", "", default=1),
    })
    bounded = report.with_limits({"count": 10, "items": 2, "missing": 5})
    assert (bounded.params["count"].maximum, bounded.params["count"].default) == (10, 10)
    assert bounded.params["items"].max_length == 2
    assert bounded.params["other"] == report.params["other"]
    assert report.params["count"].maximum == 1000  # the declared report is unchanged


def test_null_means_the_default_only_where_the_default_is_null() -> None:
    report = Report("r", "", _build, params={"n": Param("int", "", default=1)})
    assert report.validate({"title": None})["title"] is None
    with pytest.raises(ArgsError, match="n must be an integer"):
        report.validate({"n": None})


# -- checking requests ---------------------------------------------------------------


def _reports() -> dict[str, Report]:
    maxima = LIMITS.maxima()
    return {name: report.with_limits(maxima.get(name, {}))
            for name, report in discover_reports(enabled=BUILT_IN).items()}


def test_the_built_in_reports_keep_their_defaults() -> None:
    reports = _reports()
    assert parse_request(reports, {"report": "sample"}).params == {"rows": 1000, "title": None}
    assert parse_request(reports, {"report": "activity"}).params == {
        "status": [], "sources": ["exports", "runs"], "since": None, "until": None,
        "limit": 50, "title": None}
    table = parse_request(reports, {"report": "table", "params": {
        "columns": [{"name": "a"}, {"name": "b", "type": "date"}],
        "rows": [["x", "2024-01-02"], [None, None]]}})
    assert table.params["rows"] == [["x", "2024-01-02"], [None, None]]


@pytest.mark.parametrize(
    ("data", "code", "fragment"),
    [
        ("sample", "invalid_params", "data must be an object"),
        ({"report": 3}, "unknown_report", "report must be one of activity, sample, table"),
        ({"report": "sample", "params": []}, "invalid_params", "params must be an object"),
        ({"report": "sample", "params": {"rows": 1001}}, "invalid_params", "rows must be at most 1000"),
        ({"report": "sample", "params": {"rows": 0}}, "invalid_params", "at least 1"),
        ({"report": "sample", "params": {"rows": True}}, "invalid_params", "integer"),
        ({"report": "sample", "params": {"evil": 1}}, "invalid_params", "unknown argument(s) 'evil'"),
        ({"report": "table", "params": {"columns": [{"name": "a"}] * 3, "rows": []}},
         "invalid_params", "columns must have at most 2 items"),
        ({"report": "table", "params": {"columns": [{"name": "a"}], "rows": [["x"]] * 4}},
         "invalid_params", "rows must have at most 3 items"),
        ({"report": "activity", "params": {"since": "monday"}}, "invalid_params", "since"),
        ({"report": "activity", "params": {"sources": ["mail"]}}, "invalid_params", "sources"),
        ({"report": "activity", "params": {"limit": 51}}, "invalid_params", "at most 50"),
    ],
)
def test_the_edge_and_the_worker_refuse_alike(data: Any, code: str, fragment: str) -> None:
    reports = _reports()
    descriptions = [r.describe() for r in reports.values()]
    checks: list[Callable[[], object]] = [
        lambda: parse_request(reports, data),
        lambda: validate_request(descriptions, data, roles=(), admin_role="admin"),
    ]
    for check in checks:
        with pytest.raises(InvalidRequest) as caught:
            check()
        assert caught.value.code == code
        assert fragment in caught.value.message


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"columns": [], "rows": []}, "non-empty"),
        ({"columns": [{"name": "a"}], "rows": [["x", "y"]]}, "rows[0] has 2 values"),
        ({"columns": [{"name": "a"}], "rows": "x"}, "list of lists"),
        ({"columns": [{"name": "a", "type": "integer"}], "rows": [[True]]},
         "rows[0][0]: expected integer"),
        ({"columns": [{"name": "a", "type": "datetime"}], "rows": [["soon"]]}, "expected datetime"),
        ({"columns": [{"name": "a", "type": "vector"}], "rows": []}, "columns[0].type"),
        ({"columns": [{"type": "string"}], "rows": []}, "columns[0].name"),
    ],
)
def test_the_worker_checks_the_tables_cells_against_its_columns(
    params: dict[str, Any], fragment: str,
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(_reports(), {"report": "table", "params": params})
    assert caught.value.code == "invalid_params" and fragment in caught.value.message


def test_roles_decide_who_may_ask_for_a_report() -> None:
    restricted = Report("payroll", "", _build, roles=("hr",)).describe()
    data = {"report": "payroll"}
    assert validate_request([restricted], data, roles=("hr",), admin_role="admin").report == "payroll"
    assert validate_request([restricted], data, roles=("admin",), admin_role="admin")
    with pytest.raises(RequestForbidden, match="role 'hr' or 'admin'") as caught:
        validate_request([restricted], data, roles=("sales",), admin_role="admin")
    assert caught.value.code == "forbidden"


def test_a_description_whose_schema_cannot_be_read_is_an_unknown_report() -> None:
    broken = {"name": "odd", "description": "", "roles": None,
              "params": {"n": {"kind": "int", "help": "", "shape": "round"}}}
    with pytest.raises(InvalidRequest) as caught:
        validate_request([broken], {"report": "odd"}, roles=(), admin_role="admin")
    assert caught.value.code == "unknown_report" and "cannot be read" in caught.value.message


def test_a_schema_round_trips_through_its_description() -> None:
    params = {"a": Param("int", "x", default=2, minimum=1, maximum=5),
              "b": Param("str_list", "y", choices=("p", "q"), max_length=2),
              "c": Param("datetime", "z", default=None)}
    assert schema_from(describe(params)) == params
    bad: object
    for bad in ([], {"a": 1}, {"a": {"kind": "int"}}, {"a": {"kind": "int", "help": "", "maximum": "9"}},
                {"a": {"kind": "nope", "help": ""}}):
        with pytest.raises(ValueError):
            schema_from(bad)


# -- finding reports ------------------------------------------------------------------


def test_the_built_in_reports_are_entry_points_of_warren_itself() -> None:
    registry = discover_reports()
    assert BUILT_IN <= set(registry)
    assert registry.reference("sample") == "services.excel_worker.reports.sample:REPORT"
    assert [d["name"] for d in registry.describe()] == sorted(registry)


def test_a_report_of_an_installed_package_is_found_with_its_roles(site: Site) -> None:
    site.module("acme", REPORTS_MODULE)
    site.distribution("acme-reports", ENTRY_POINT_GROUP, {"acme_numbers": "acme:NUMBERS"})
    registry = discover_reports()
    assert set(registry) == BUILT_IN | {"acme_numbers"}
    assert registry["acme_numbers"].roles == ("ops",)
    assert registry.reference("acme_numbers") == "acme:NUMBERS"
    assert str(site.root) in registry.import_paths()


def test_the_limits_bound_the_built_in_reports_as_found() -> None:
    registry = discover_reports(enabled={"sample"}, maxima=LIMITS.maxima())
    assert registry["sample"].params["rows"].maximum == 1000
    assert registry.describe()[0]["params"]["rows"]["maximum"] == 1000


def test_a_report_name_offered_twice_stops_the_start_naming_both_packages(site: Site) -> None:
    site.module("acme", REPORTS_MODULE)
    site.distribution("acme-one", ENTRY_POINT_GROUP, {"acme_numbers": "acme:NUMBERS"})
    site.distribution("acme-two", ENTRY_POINT_GROUP, {"acme_numbers": "acme:NUMBERS"})
    with pytest.raises(ReportLoadError, match="acme-one 1.0.*acme-two 1.0|acme-two 1.0.*acme-one 1.0"):
        discover_reports()
    with pytest.raises(ReportLoadError, match="two sources offer the report 'acme_numbers'"):
        discover_reports(enabled={"acme_numbers"}, extra=("acme:NUMBERS",))


def test_a_module_that_fails_to_import_stops_the_start_naming_the_package(site: Site) -> None:
    site.module("acme_broken", "raise RuntimeError('no database configured')\n")
    site.distribution("acme-broken", ENTRY_POINT_GROUP, {"acme_x": "acme_broken:REPORT"})
    with pytest.raises(ReportLoadError) as caught:
        discover_reports()
    message = str(caught.value)
    assert "acme-broken 1.0" in message and "'acme_x'" in message
    assert "RuntimeError: no database configured" in message
    # Left out by name, it is not even imported.
    assert set(discover_reports(enabled=BUILT_IN)) == BUILT_IN


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("acme:NOT_A_REPORT", "is a function, not a warren.Report"),
     ("acme:MISSING", "AttributeError"), ("acme", "not a module:attribute reference")],
)
def test_an_entry_point_that_is_no_report_stops_the_start(site: Site, value: str,
                                                          fragment: str) -> None:
    site.module("acme", REPORTS_MODULE)
    site.distribution("acme-reports", ENTRY_POINT_GROUP, {"acme_numbers": value})
    with pytest.raises(ReportLoadError, match=fragment):
        discover_reports()


def test_an_entry_point_must_be_named_after_its_report(site: Site) -> None:
    site.module("acme", REPORTS_MODULE)
    site.distribution("acme-reports", ENTRY_POINT_GROUP, {"numbers": "acme:NUMBERS"})
    with pytest.raises(ReportLoadError, match="must be named after its report"):
        discover_reports()


def test_extra_references_add_reports_and_enabled_restricts(site: Site) -> None:
    site.module("acme", REPORTS_MODULE)
    registry = discover_reports(extra=("acme:NUMBERS",), enabled={"acme_numbers", "sample"})
    assert set(registry) == {"acme_numbers", "sample"}
    with pytest.raises(ReportLoadError, match="names nope, which no installed package offers"):
        discover_reports(enabled={"nope"})


def test_settings_read_the_references_and_the_enabled_names() -> None:
    settings = ExcelSettings.from_env({"WARREN_EXCEL_REPORTS": "acme:NUMBERS, shop.r:ORDERS",
                                       "WARREN_EXCEL_REPORTS_ENABLED": "sample,acme_numbers"})
    assert settings.report_references == ("acme:NUMBERS", "shop.r:ORDERS")
    assert settings.reports_enabled == frozenset({"sample", "acme_numbers"})
    assert ExcelSettings.from_env({}).reports_enabled is None
    for env in ({"WARREN_EXCEL_REPORTS": "acme.NUMBERS"},
                {"WARREN_EXCEL_REPORTS_ENABLED": "a b"}):
        with pytest.raises(ConfigError):
            ExcelSettings.from_env(env)


# -- the build, in this process ------------------------------------------------------

STREAM_MODULE = '''
from warren import Column, Report, Table

RECEIVER = None  # the test's end of the build's pipe
LAGS = []

def stream(params, ctx):
    def rows():
        received = 0
        for i in range(params["count"]):
            while RECEIVER.poll():
                message = RECEIVER.recv()
                if message[0] == "progress":
                    received = message[1]
            LAGS.append(i - received)  # rows taken from here but not yet written
            yield [i, ctx.user_id]
    return Table([Column("n", "integer"), Column("user")], rows())

def mismatched(params, ctx):
    return Table([Column("n", "integer"), Column("name")], iter([[1, "a"], [2, "b"], [3]]))

def raises(params, ctx):
    raise RuntimeError("the orders database is away")

STREAM = Report("acme_stream", "", stream)
MISMATCHED = Report("acme_mismatched", "", mismatched)
RAISES = Report("acme_raises", "", raises)
'''


def _run(tmp_path: Path, reference: str, monkeypatch: pytest.MonkeyPatch,
         params: dict[str, Any] | None = None) -> tuple[list[tuple[Any, ...]], Path]:
    """Run the build child's entry point here; return every message it sent."""
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # run_job sets it
    work = tmp_path / "work"
    work.mkdir()
    receiver, sender = multiprocessing.Pipe(duplex=False)
    setattr(sys.modules[load_report(reference).build.__module__], "RECEIVER", receiver)
    job = BuildJob(task_id="t1", owner="alice", report=reference.split(":")[1].lower(),
                   reference=reference, params={"title": None, **(params or {})},
                   work_dir=str(work), progress_interval_s=0.0)
    run_job(job, sender)
    messages = []
    while True:
        try:
            messages.append(receiver.recv())
        except EOFError:  # run_job closed its end
            return messages, job.output


def test_a_reports_rows_stream_from_its_iterator_into_the_sheet(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    site.module("acme_build", STREAM_MODULE)
    count = 5 * PROGRESS_EVERY
    messages, output = _run(tmp_path, "acme_build:STREAM", monkeypatch, {"count": count})
    assert messages[-1][0] == "done" and messages[-1][1] == count
    # Unknown total: progress says so until the end, then counts it.
    assert messages[-2] == ("progress", count, count)
    import acme_build
    # Row i is taken only once the rows before it, but for one progress step, are written.
    assert len(acme_build.LAGS) == count and max(acme_build.LAGS) <= PROGRESS_EVERY
    sheet = openpyxl.load_workbook(output, read_only=True)["stream"]
    assert [c.value for c in next(sheet.iter_rows(min_row=count + 1))] == [count - 1, "alice"]


def test_rows_that_do_not_match_the_columns_end_the_build_naming_the_row(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    site.module("acme_build", STREAM_MODULE)
    messages, _ = _run(tmp_path, "acme_build:MISMATCHED", monkeypatch)
    assert messages[-1] == ("invalid_row", "row 3 has 1 values for 2 columns")


def test_a_report_that_raises_is_an_error_of_the_attempt(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    site.module("acme_build", STREAM_MODULE)
    messages, _ = _run(tmp_path, "acme_build:RAISES", monkeypatch)
    assert messages[-1] == ("error", "RuntimeError: the orders database is away")

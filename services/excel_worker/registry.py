"""The reports a worker offers, found once at start-up (shared/plugins.py; the rules for
users are in docs/exports.md). The deployment's limits (``WARREN_EXCEL_MAX_*``) bound
the reports' parameters (:meth:`shared.exports.settings.Limits.maxima`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from shared.plugins import REFERENCE, PluginKind, PluginLoadError, Registry, discover, load
from warren.reports import Report

ENTRY_POINT_GROUP: Final = "warren.reports"
REPORTS_SETTING: Final = "WARREN_EXCEL_REPORTS"
ENABLED_SETTING: Final = "WARREN_EXCEL_REPORTS_ENABLED"

__all__ = ["ENABLED_SETTING", "ENTRY_POINT_GROUP", "REFERENCE", "REPORTS", "REPORTS_SETTING",
           "ReportLoadError", "ReportRegistry", "discover_reports", "load_report"]


class ReportLoadError(PluginLoadError):
    """A report source is broken; the message names the package and the entry point."""


REPORTS: Final = PluginKind(
    noun="report", cls=Report, group=ENTRY_POINT_GROUP, references_setting=REPORTS_SETTING,
    enabled_setting=ENABLED_SETTING, error=ReportLoadError, example="shop.reports:ORDERS",
)

ReportRegistry = Registry[Report]


def discover_reports(
    extra: Sequence[str] = (), enabled: Collection[str] | None = None,
    maxima: Mapping[str, Mapping[str, int]] | None = None,
    *, group: str = ENTRY_POINT_GROUP,
) -> ReportRegistry:
    """Every report of the entry-point ``group`` and of the ``extra`` references,
    restricted to ``enabled`` (None: all), each bounded by its ``maxima`` (by report name,
    then parameter). :class:`ReportLoadError` if any source is broken."""
    bounds = maxima or {}
    return discover(REPORTS, extra, enabled, group=group,
                    adapt=lambda report: report.with_limits(bounds.get(report.name, {})))


def load_report(reference: str) -> Report:
    """The report a build's child process imports; errors as :func:`shared.plugins.load`."""
    return load(REPORTS, reference)

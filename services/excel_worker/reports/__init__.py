"""Warren's own reports: ``sample``, ``table`` and ``activity``.

Each module holds one :class:`warren.Report` named ``REPORT``; they reach the worker the
way any installed package's reports do, through the entry-point group
``warren.reports`` (pyproject.toml), and use only the public API.
"""

from __future__ import annotations

from typing import Final

from services.excel_worker.reports import activity, sample, table
from warren.reports import Report

# The edge checks requests for these against their declarations while no worker is up
# to announce them (services/ws_edge/handlers/exports.py); they run only in a worker.
BUILT_IN_REPORTS: Final[tuple[Report, ...]] = (activity.REPORT, sample.REPORT, table.REPORT)

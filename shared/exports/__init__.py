"""What the edge and the excel_worker both need about exports, so neither imports the other.

The edge takes requests and serves files; the worker builds them. They agree here on the
request rules and limits (``requests``, ``settings``), on where files live and what they
are called (``storage``), and on the events the owner receives (``events``). The task
and notification tables are in ``shared.db``.
"""

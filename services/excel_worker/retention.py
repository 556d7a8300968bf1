"""Retention: delete stored files older than the configured age, and say so in the row.

Every worker replica sweeps; the steps are idempotent (a missing file is fine, and the
row moves done -> expired only once). Stale temporary files left by killed builds are
removed too.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path

from shared.db.exports import ExportStore
from shared.db.models import utcnow

log = logging.getLogger(__name__)

STALE_PART_S = 3600.0


def sweep(store: ExportStore, directory: Path, retention_s: float) -> int:
    """Blocking: expire what is older than ``retention_s``; return how many files expired."""
    cutoff = utcnow() - timedelta(seconds=retention_s)
    expired = 0
    for record in store.expirable(cutoff):
        if record.file_name:
            path = directory / Path(record.file_name).name
            try:
                path.unlink(missing_ok=True)
            except OSError:
                log.warning("could not delete an expired export", extra={"task_id": record.id},
                            exc_info=True)
                continue
        if store.mark_expired(record.id):
            expired += 1
    _remove_stale_parts(directory)
    return expired


def _remove_stale_parts(directory: Path) -> None:
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".part"):
            try:
                if now - entry.stat().st_mtime > STALE_PART_S:
                    os.unlink(entry.path)
            except OSError:
                pass

"""Retention: delete stored files older than the configured age, and say so in the row.

Every worker replica sweeps; the steps are idempotent (a missing file is fine, and the
row moves done -> expired only once). Work directories left by builds that died with
their worker (SIGKILL, OOM) are removed too, once no build can still be using them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Final

from shared.db.exports import ExportRecord, ExportStore
from shared.db.models import utcnow
from shared.exports.storage import stored_path
from services.excel_worker.files import WORK_DIR_SUFFIX

log = logging.getLogger(__name__)

BATCH: Final = 500
STALE_MARGIN_S: Final = 3600.0


def sweep(store: ExportStore, directory: Path, retention_s: float, build_timeout_s: float) -> int:
    """Blocking: expire what is older than ``retention_s``; return how many tasks expired.

    A work directory is deleted once it is older than the build timeout plus a margin:
    no build can still be using it (its own worker kills it at the timeout).
    """
    cutoff = utcnow() - timedelta(seconds=retention_s)
    expired = 0
    while True:
        batch = store.expirable(cutoff, BATCH)
        done = sum(_expire(store, directory, record) for record in batch)
        expired += done
        if len(batch) < BATCH or not done:
            break
    _remove_stale_work_dirs(directory, build_timeout_s + STALE_MARGIN_S)
    return expired


def _expire(store: ExportStore, directory: Path, record: ExportRecord) -> bool:
    if record.file_name:
        try:
            stored_path(directory, record.file_name).unlink(missing_ok=True)
        except ValueError:
            log.warning("not a stored file name; nothing deleted", extra={"task_id": record.id})
        except OSError:
            log.warning("could not delete an expired export", extra={"task_id": record.id},
                        exc_info=True)
            return False
    return store.mark_expired(record.id)


def _remove_stale_work_dirs(directory: Path, stale_after_s: float) -> None:
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(WORK_DIR_SUFFIX)):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime > stale_after_s:
                shutil.rmtree(entry.path)
        except OSError:
            log.warning("could not remove a stale work directory", extra={"path": entry.path},
                        exc_info=True)

"""A build's files on the storage volume: its private work directory, and the move into place.

Every attempt builds in a hidden directory of its own (``.<task_id>.<random>.build``),
so a crashed, killed or duplicate build never touches another one's files; the worker
moves the finished file to its stored name and removes the directory. Retention removes
directories whose worker died with them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Final

OUTPUT_NAME: Final = "export.xlsx"
WORK_DIR_SUFFIX: Final = ".build"


def work_dir_name(task_id: str) -> str:
    """Hidden, and unique per attempt."""
    return f".{task_id}.{uuid.uuid4().hex[:8]}{WORK_DIR_SUFFIX}"


def move_into_storage(built: Path, final: Path) -> None:
    """Atomically give the built file its stored name, and make the rename durable."""
    os.replace(built, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

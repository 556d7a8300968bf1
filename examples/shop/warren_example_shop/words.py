"""A job: count the words of a file in the runner's files directory, showing progress."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from warren import Job, JobContext, Param


def count_words(args: dict[str, Any], ctx: JobContext) -> None:
    # A ``path`` argument arrives resolved inside WARREN_RUNNER_FILES_DIR; the runner
    # refused any name outside it before this process started.
    file: Path = args["file"]
    every: int = args["every"]
    counts: Counter[str] = Counter()
    lines = 0
    with file.open(encoding="utf-8", errors="replace") as text:
        for lines, line in enumerate(text, 1):
            if not ctx.running():  # the user pressed Stop
                print(f"stopped after {lines - 1} lines, {counts.total()} words")
                return
            counts.update(line.lower().split())
            if lines % every == 0:
                print(f"{lines} lines, {counts.total()} words")  # reaches the user now
    print(f"done: {lines} lines, {counts.total()} words, {len(counts)} different")
    for word, n in counts.most_common(args["top"]):
        print(f"{n:>8} {word}")


WORD_COUNT = Job(
    "shop_word_count",
    "Counts the words of a file in the files directory, with progress as it reads.",
    count_words,
    params={
        "file": Param("path", "a text file in the runner's files directory"),
        "top": Param("int", "how many of the most frequent words", default=5,
                     minimum=1, maximum=100),
        "every": Param("int", "a progress line every so many lines", default=1000, minimum=1),
    },
)

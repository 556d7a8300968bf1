"""How a Cat call fails, each with a stable code for ``chat.error`` (docs/cat_relay.md)."""

from __future__ import annotations


class CatError(Exception):
    code = "cat_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CatUnavailable(CatError):
    """The Cat could not be reached, or dropped the connection mid-answer."""

    code = "cat_unavailable"


class CatTimeout(CatError):
    """The Cat did not answer within ``WARREN_CAT_TIMEOUT_S``."""

    code = "cat_timeout"


class CatFailed(CatError):
    """The Cat answered with an error (v1 ``error`` frame, v2 ``RUN_ERROR``, HTTP 4xx/5xx)."""

    code = "cat_error"


class CatNoLlm(CatError):
    """The Cat has no language model configured: it answers every ask with a placeholder."""

    code = "cat_no_llm"

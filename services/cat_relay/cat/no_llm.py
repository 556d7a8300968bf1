"""Telling that a Cat has no language model configured, and where its admin chooses one.

Such a Cat does not fail: the placeholder model each version ships answers every ask
with one fixed sentence, written at once, not streamed. Neither version marks that
answer as special, and the settings that would tell are admin-only (Cat 2.x lists them
only after asking every model provider for its models: far too slow for each ask). So
the relay recognises the sentence itself, when it arrives whole with no token before it,
and answers ``cat_no_llm`` instead, naming the Cat's settings page. A Cat whose
placeholder says something else is not recognised: the user gets its sentence as an
ordinary reply.
"""

from __future__ import annotations

from typing import Final

from services.cat_relay.cat.base import OnToken
from services.cat_relay.cat.errors import CatNoLlm

# Cat 1.x's ``LLMDefault``: later versions dropped the agent's "AI: " prefix.
V1_PLACEHOLDERS: Final = frozenset({
    "You did not configure a Language Model. Do it in the settings!",
    "AI: You did not configure a Language Model. Do it in the settings!",
})
# Cat 2.x's ``DefaultModelProvider`` (``NOT_CONFIGURED_MESSAGE``).
V2_PLACEHOLDERS: Final = frozenset({
    "No Language Model is configured yet. Choose one in the settings!",
})


class TokenWatch:
    """Passes tokens on to ``on_token`` and remembers whether any came."""

    def __init__(self, on_token: OnToken) -> None:
        self._on_token = on_token
        self.streamed = False

    def __call__(self, token: str) -> None:
        self.streamed = True
        self._on_token(token)


def checked(reply: str, watch: TokenWatch, placeholders: frozenset[str], where: str) -> str:
    """``reply``, unless it is the Cat's placeholder: then :class:`CatNoLlm` naming ``where``."""
    if not watch.streamed and reply.strip() in placeholders:
        raise CatNoLlm(
            "The Cat has no language model configured, so it cannot answer. Its admin "
            f"chooses one in the Cat's settings: {where}"
        )
    return reply

"""``GET /api/catalogue``: what the running services offer, as far as the caller may use it.

The edge keeps the catalogue in memory (services/ws_edge/command_gate.py); answering
reads no database and no broker.
"""

from __future__ import annotations

from services.ws_edge.handlers.api import ApiHandler


class CatalogueHandler(ApiHandler):
    def get(self) -> None:
        self.write_json(self.deps.commands.catalogue_for(self.identity))

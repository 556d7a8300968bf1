"""Declaring what a service offers in Warren's catalogue (docs/extending.md, "Commands
and the catalogue"; docs/protocol.md 16).

A process that consumes a command type of its own declares it with an :class:`Advertiser`,
once it consumes: the edges accept the type from clients while it is declared, and
``Advertiser.stop`` withdraws it. Imported on its own (``from warren.catalogue import
...``): it loads the broker client, which a job's process does not need.
"""

from __future__ import annotations

from shared.catalogue.advertiser import Advertiser
from shared.catalogue.model import CatalogueError, CommandType, Offer

__all__ = ["Advertiser", "CatalogueError", "CommandType", "Offer"]

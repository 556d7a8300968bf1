"""The catalogue: what each running service offers (command types with who may send them,
jobs, reports), announced on the broker and read by the edges (docs/protocol.md,
"The catalogue")."""

from shared.catalogue.advertiser import Advertiser, advertise
from shared.catalogue.model import (
    Announcement,
    CatalogueError,
    CommandType,
    Offer,
    Refusal,
    Roles,
    parse_announcement,
)
from shared.catalogue.view import CatalogueView, Listing

__all__ = [
    "Advertiser",
    "Announcement",
    "CatalogueError",
    "CatalogueView",
    "CommandType",
    "Listing",
    "Offer",
    "Refusal",
    "Roles",
    "advertise",
    "parse_announcement",
]

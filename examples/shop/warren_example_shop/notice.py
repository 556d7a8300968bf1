"""``shop-notice``: a backend publishing an event to a group's browser tabs over HTTP.

It holds a service key (``SHOP_WARREN_KEY``, made with ``warren key add shop --scope
publish``), not broker credentials; its events come from ``service:<key name>``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Final

from warren import PublishError, WarrenPublisher
from warren_example_shop.settings import NoticeSettings, SettingsError

EVENT_TYPE: Final = "shop.notice"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shop-notice", description="Send a notice to the members of a Warren group."
    )
    parser.add_argument("group", help="the group, e.g. team")
    parser.add_argument("text", help="the notice")
    parser.add_argument("--id", help="the event's id, to publish it again safely after an error")
    args = parser.parse_args(argv)
    try:
        settings = NoticeSettings.from_env(os.environ)
    except SettingsError as exc:
        print(f"shop-notice: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    try:
        with WarrenPublisher(settings.edge_url, settings.key) as warren:
            event_id = warren.publish(f"group:{args.group}", EVENT_TYPE, {"text": args.text},
                                      id=args.id)
    except PublishError as exc:
        # unavailable / unreachable: publishing again with the same --id is safe.
        print(f"shop-notice: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    print(event_id)


if __name__ == "__main__":
    main()

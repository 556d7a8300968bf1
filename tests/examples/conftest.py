"""The example application's package, importable here for the unit tests of its logic.

The end-to-end test installs it into a virtualenv of its own instead (test_shop.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
if str(SHOP) not in sys.path:
    sys.path.insert(0, str(SHOP))

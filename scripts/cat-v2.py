"""Start a local Cheshire Cat 2.x on 127.0.0.1, for tests and development.

Run it with the Cat's own interpreter (``.venv-cat/bin/python``; the Cat's
dependencies never mix with Warren's) from the folder the Cat may keep its data in:

    .venv-cat/bin/python scripts/cat-v2.py --port 1865

``--fd N`` serves on an already bound and listening socket instead (tests pass one, so
the port cannot be taken in between). The Cat runs offline: with no language model
configured it answers every message with a fixed text.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1865)
    parser.add_argument("--fd", type=int, default=None)
    args = parser.parse_args()
    Path("config.py").write_text(
        f'URL = "http://127.0.0.1:{args.port}"\n'
        "DEBUG = False\nTELEMETRY = False\nLOG_LEVEL = \"WARNING\"\n"
    )
    from cat.scaffold import scaffolder
    import uvicorn

    scaffolder.setup_project()
    where = {"fd": args.fd} if args.fd is not None else {"host": "127.0.0.1", "port": args.port}
    uvicorn.run("cat.startup:cheshire_cat_api", ws="none", log_level="info", **where)


if __name__ == "__main__":
    main()

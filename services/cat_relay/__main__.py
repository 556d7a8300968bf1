"""``python -m services.cat_relay``: the same as ``warren cat-relay``."""

from services.cli import main

if __name__ == "__main__":
    main(["cat-relay"])

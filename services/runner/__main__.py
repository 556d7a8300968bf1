"""``python -m services.runner``: the same as ``warren runner``."""

from services.cli import main

if __name__ == "__main__":
    main(["runner"])

"""``python -m services.ws_edge``: the same as ``warren edge``."""

from services.cli import main

if __name__ == "__main__":
    main(["edge"])

"""``python -m services.excel_worker``: the same as ``warren excel-worker``."""

from services.cli import main

if __name__ == "__main__":
    main(["excel-worker"])

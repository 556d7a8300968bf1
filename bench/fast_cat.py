"""A fast Cheshire Cat 1.x for benchmarks: the protocol double in its own process.

    python -m bench.fast_cat --port 1865

Answers at once, streaming its reply in a few tokens. ``GET /stats`` tells how long it
spent on each ask, so a benchmark can subtract the Cat's own time.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson

from tests.support.cat_v1 import CatV1Double


async def serve(port: int) -> None:
    cat = CatV1Double(port=port, token_size=8).start()
    print(orjson.dumps({"message": "cat ready", "port": cat.port}).decode(), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1865)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()

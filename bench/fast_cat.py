"""A fast Cheshire Cat 1.x for benchmarks: the protocol double in its own process.

    python -m bench.fast_cat --port 1865 [--tokens 8] [--pace-ms 10]

Each reply is ``--tokens`` tokens of 5 characters, streamed as ``chat_token`` frames
``--pace-ms`` apart, then the final ``chat`` frame: by default a short answer from a fast
model (100 tokens/s), about 80 ms. ``GET /stats`` tells how long it spent on each ask, from reading the
ask to writing the final frame, so a benchmark can subtract the Cat's own time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
import uvloop

from tests.support.cat_v1 import CatV1Double


class FastCat(CatV1Double):
    def __init__(self, *, port: int, tokens: int, pace_s: float) -> None:
        super().__init__(port=port, pace_s=pace_s)
        self.words = [f"w{i:03d} " for i in range(tokens)]
        self.reply = "".join(self.words)

    async def answer(self, user_id: str, text: str) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = [{"type": "chat_token", "content": w} for w in self.words]
        frames.append({
            "type": "chat", "user_id": user_id, "text": self.reply, "content": self.reply,
            "when": time.time(), "who": "AI", "why": {"input": text, "intermediate_steps": []},
        })
        return frames


async def serve(port: int, tokens: int, pace_s: float) -> None:
    cat = FastCat(port=port, tokens=tokens, pace_s=pace_s).start()
    print(orjson.dumps({"message": "cat ready", "port": cat.port}).decode(), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=1865)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--pace-ms", type=float, default=10.0)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.tokens, args.pace_ms / 1000))


if __name__ == "__main__":
    main()

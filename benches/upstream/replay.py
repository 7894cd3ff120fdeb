"""Upstream's boot replay, timed: ChronoLedger.boot() of one ledger into a fresh MeshNode.

    python benches/upstream/replay.py LEDGER.jsonl

Needs aether-zta 0.4.0 (``pip install aether-zta==0.4.0``). Called by ``benches/replay.rs`` when
AETHER_BENCH_UPSTREAM names the interpreter. Prints one JSON line:
{"records": N, "seconds": S, "live_keys": K}. Only boot() is timed (imports and object
construction are not); the mesh is never started, so nothing listens on the network.
"""

import asyncio
import json
import sys
import time

from aether_core.mesh import MeshNode
from aether_core.storage import ChronoLedger


async def main(path: str) -> None:
    ledger = ChronoLedger(path)
    node = MeshNode("bench", port=0)
    started = time.perf_counter()
    replayed = await ledger.boot(node)
    seconds = time.perf_counter() - started
    live = len(node.snapshot())
    await ledger.close()
    print(json.dumps({"records": replayed, "seconds": seconds, "live_keys": live}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: replay.py LEDGER.jsonl")
    asyncio.run(main(sys.argv[1]))

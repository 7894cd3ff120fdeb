"""Upstream's durable ledger writer, timed: N MeshNode.set() calls persisted by ChronoLedger.

    python benches/upstream/ledger_write.py LEDGER.jsonl N

Needs aether-zta 0.4.0. Called by ``benches/ledger.rs`` when AETHER_BENCH_UPSTREAM names the
interpreter. ChronoLedger writes each record with one os.write() + os.fsync() on a worker thread.
Times from the first set() to the end of ledger.flush() (every record fsynced); prints one JSON
line: {"records": N, "seconds": S}. The mesh is never started: nothing listens on the network.
"""

import asyncio
import json
import sys
import time

from aether_core.mesh import MeshNode
from aether_core.storage import ChronoLedger


async def main(path: str, n: int) -> None:
    ledger = ChronoLedger(path)
    node = MeshNode("bench", port=0, on_op=ledger.on_op)
    await ledger.boot(node)
    started = time.perf_counter()
    for i in range(n):
        await node.set(f"obj:{i % 200000:06d}", {"i": i, "tag": "bench"})
    await ledger.flush()
    seconds = time.perf_counter() - started
    written = ledger.written_count
    await ledger.close()
    print(json.dumps({"records": written, "seconds": seconds}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: ledger_write.py LEDGER.jsonl N")
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))

"""Upstream's durable ledger writer, timed: MeshNode.set() calls persisted by ChronoLedger.

    python benches/upstream/ledger_write.py LEDGER.jsonl N [APPENDERS]

Needs aether-zta 0.4.0. Called by ``benches/e2e`` when AETHER_BENCH_UPSTREAM names the
interpreter. APPENDERS (default 1) asyncio tasks each do N / APPENDERS appends; an append is
``await node.set(...)`` (which queues the record for the ledger's writer task) followed by
``await ledger.flush()`` (which returns once the writer has written and fsynced everything queued,
this record included: upstream has no per-record acknowledgement). The writer task does one
os.write() + os.fsync() per record on a worker thread.

Prints one JSON line: {"records": N, "seconds": S}, S from the first set() to the last flush().
The mesh is never started: nothing listens on the network.
"""

import asyncio
import json
import sys
import time

from aether_core.mesh import MeshNode
from aether_core.storage import ChronoLedger


async def main(path: str, n: int, appenders: int) -> None:
    ledger = ChronoLedger(path)
    node = MeshNode("bench", port=0, on_op=ledger.on_op)
    await ledger.boot(node)

    async def appender(a: int) -> None:
        for j in range(n // appenders):
            i = j * appenders + a
            await node.set(f"obj:{i % 200000:06d}", {"i": i, "tag": "bench"})
            await ledger.flush()

    started = time.perf_counter()
    await asyncio.gather(*(appender(a) for a in range(appenders)))
    await ledger.flush()
    seconds = time.perf_counter() - started
    written = ledger.written_count
    await ledger.close()
    print(json.dumps({"records": written, "seconds": seconds}))


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: ledger_write.py LEDGER.jsonl N [APPENDERS]")
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else 1))

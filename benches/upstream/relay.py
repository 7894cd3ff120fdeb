"""Upstream's relay (Aether-Core 0.4.0) as one process, for the load benchmarks.

    python benches/upstream/relay.py LEDGER.jsonl

Needs aether-zta 0.4.0. Started by ``benches/e2e`` when AETHER_BENCH_UPSTREAM names the
interpreter. Wires the stack as upstream's run_demo.py does (by hand): a ChronoLedger replays
LEDGER into a MeshNode (using ``<LEDGER>.snapshot.json`` when present), the mesh's on_op feeds
the ledger and then the gateway, the mesh listens on 127.0.0.1 port 0 (no peers) and the
ClientGateway on 127.0.0.1 port 0. Limits are upstream's defaults except the ones a load test
needs raised: messages_per_second and messages_burst (1,000,000), max_connections_total and
max_connections_per_source (20,000). The open-file soft limit is raised to the hard limit.

Prints the gateway's ws:// URL on stdout once it listens, then runs until SIGTERM or SIGINT, after
which it stops the gateway and the mesh and closes the ledger (which writes every queued record;
upstream broadcasts a write before its record is written and fsynced). Logs at WARNING to stderr.
"""

import asyncio
import logging
import resource
import signal
import sys

from aether_core._security import SecurityLimits
from aether_core.gateway import ClientGateway
from aether_core.mesh import MeshNode
from aether_core.storage import ChronoLedger


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(path: str) -> None:
    limits = SecurityLimits(
        messages_per_second=1_000_000.0,
        messages_burst=1_000_000,
        max_connections_total=20_000,
        max_connections_per_source=20_000,
    )
    ledger = ChronoLedger(path)
    gateway: dict[str, ClientGateway] = {}

    async def on_op(op, source_peer):
        # As run_demo.py composes them: the ledger first (which only queues the record), then the
        # broadcast to every browser.
        await ledger.on_op(op, source_peer)
        gw = gateway.get("gw")
        if gw is not None:
            await gw.on_op(op, source_peer)

    mesh = MeshNode("alpha", "127.0.0.1", 0, on_op=on_op, limits=limits)
    gw = ClientGateway(mesh, host="127.0.0.1", port=0, limits=limits)
    gateway["gw"] = gw
    replayed = await ledger.boot(mesh)
    await mesh.start()
    await gw.start()
    logging.getLogger("bench").warning("replayed %d records, %d snapshot entries", replayed, ledger.snapshot_entries)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(gw.url, flush=True)
    await stop.wait()
    await gw.stop()
    await mesh.stop()
    await ledger.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: relay.py LEDGER.jsonl")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    raise_fd_limit()
    asyncio.run(main(sys.argv[1]))

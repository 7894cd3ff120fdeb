"""Drive one upstream Aether-Core mesh node (aether-zta==0.4.0) for the mesh interop tests.

The Rust tests start this script with the upstream venv's Python, talk to it with one JSON object
per line on stdin, and read exactly one JSON line back on stdout per command, so they can check
that our mesh and upstream's `MeshNode` federate both ways (dialling and accepting, with and
without a token).

    python mesh_peer.py --node-id py [--token SECRET]

On start it listens on 127.0.0.1 with a port the OS picks and prints
{"event":"listening","port":N}. Commands:

    {"cmd":"connect","url":"ws://127.0.0.1:PORT"} -> {"ok":true,"peer":ID} | {"ok":false,"error":...}
    {"cmd":"set","key":K,"value":V}               -> {"ok":true}   (local write, published to peers)
    {"cmd":"delete","key":K}                      -> {"ok":true}
    {"cmd":"state"}                               -> {"ok":true,"state":{K:V,...},"peers":[ID,...]}
    {"cmd":"exit"}                                -> {"ok":true}, then it stops the node and exits

It also exits when stdin closes. Upstream's log goes to stderr (--log-level, default WARNING);
a reader should drain or inherit stderr so a full pipe never blocks this process.
"""

import argparse
import asyncio
import json
import logging
import sys
from urllib.parse import urlsplit

from aether_core import AuthConfig, MeshNode


def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def handle(node, msg):
    """Run one command; return its answer (without stopping the node)."""
    cmd = msg.get("cmd")
    if cmd == "connect":
        url = urlsplit(msg["url"])
        if url.scheme != "ws" or not url.hostname or not url.port:
            raise ValueError(f"want ws://HOST:PORT, got {msg['url']!r}")
        # Upstream dials ws://host:port/ itself (wss only with an ssl_context): it takes no URL.
        return {"ok": True, "peer": await node.connect_to(url.hostname, url.port)}
    if cmd == "set":
        await node.set(msg["key"], msg["value"])
        return {"ok": True}
    if cmd == "delete":
        await node.delete(msg["key"])
        return {"ok": True}
    if cmd == "state":
        # snapshot() is the live view: tombstones, and values set to null, are left out.
        return {"ok": True, "state": node.snapshot(), "peers": sorted(node.peer_ids)}
    raise ValueError(f"unknown command {cmd!r}")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node-id", required=True)
    ap.add_argument("--token", help="shared secret peers must present (upstream AuthConfig)")
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="[py %(levelname)s] %(message)s")

    # MeshNode builds asyncio objects, so it is made inside the running loop. Port 0: the OS
    # picks one and start() writes it back to node.port.
    node = MeshNode(args.node_id, "127.0.0.1", 0, auth=AuthConfig(token=args.token))
    await node.start()
    reply({"event": "listening", "port": node.port})

    loop = asyncio.get_running_loop()
    try:
        while True:
            # A thread reads stdin so a pipe, a file or a terminal all work; "" is end of input.
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
                if msg.get("cmd") == "exit":
                    await node.stop()
                    reply({"ok": True})
                    return
                reply(await handle(node, msg))
            except Exception as e:  # every command gets exactly one answer
                print(f"[py error] {line.strip()}: {e!r}", file=sys.stderr, flush=True)
                reply({"ok": False, "error": f"{type(e).__name__}: {e}"})
    finally:
        await node.stop()  # a no-op when already stopped


if __name__ == "__main__":
    asyncio.run(main())

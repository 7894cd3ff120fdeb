"""Times the WebSocket closing handshake with Python `websockets` (driven by tests/closes.rs).

Usage: python closes.py URL CLIENT READ
  CLIENT: sync (websockets.sync.client), asyncio (websockets.asyncio.client, websockets >= 13) or
          legacy (websockets.legacy.client, the API upstream uses).
  READ:   drain (read every frame already sent, then close), none (close at once, whatever the
          relay still has queued for us, megabytes included) or oversized (the relay closes: send
          a message over max_frame_bytes, read on until the connection is closed).
Prints one JSON line: {"ms": <time close() took, or from the send until closed>,
"code": <close code the relay sent>}.
Every wait is bounded: close() by the library's own close_timeout (10 s), reads by 5 s.
"""

import asyncio
import json
import sys
import time
import warnings

# websockets >= 14 prefers `with connect(...)`; these probes open and close by hand on purpose.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def main():
    url, client, read = sys.argv[1:4]
    if client == "sync":
        ms, code = run_sync(url, read)
    else:
        ms, code = asyncio.run(run_async(url, client, read))
    print(json.dumps({"ms": ms, "code": code}), flush=True)


def run_sync(url, read):
    from websockets.sync.client import connect

    ws = connect(url, max_size=None, open_timeout=5)
    ws.recv(timeout=5)  # hello: the relay has registered us
    if read == "oversized":
        from websockets.exceptions import ConnectionClosed

        started = time.monotonic()
        ws.send("x" * (300 * 1024))
        try:
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed:
            pass
        return (time.monotonic() - started) * 1000, received_code(ws)
    if read == "drain":
        try:
            while True:
                ws.recv(timeout=0.3)
        except TimeoutError:
            pass
    started = time.monotonic()
    ws.close()
    ms = (time.monotonic() - started) * 1000
    return ms, received_code(ws)


async def run_async(url, client, read):
    if client == "legacy":
        from websockets.legacy.client import connect
    else:
        from websockets.asyncio.client import connect
    ws = await connect(url, max_size=None, open_timeout=5)
    await asyncio.wait_for(ws.recv(), 5)  # hello
    if read == "oversized":
        from websockets.exceptions import ConnectionClosed

        started = time.monotonic()
        await ws.send("x" * (300 * 1024))
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return (time.monotonic() - started) * 1000, received_code(ws)
    if read == "drain":
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 0.3)
        except asyncio.TimeoutError:
            pass
    started = time.monotonic()
    await ws.close()
    ms = (time.monotonic() - started) * 1000
    return ms, received_code(ws)


def received_code(ws):
    """The code of the relay's close frame (the new API keeps it on its protocol object)."""
    protocol = getattr(ws, "protocol", None)
    if protocol is not None and hasattr(protocol, "close_rcvd"):
        return protocol.close_rcvd.code
    return ws.close_code


if __name__ == "__main__":
    main()

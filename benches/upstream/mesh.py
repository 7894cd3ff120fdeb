"""Upstream's federation (Aether-Core 0.4.0 MeshNode), timed, for the `mesh` benchmark.

    python benches/upstream/mesh.py ring    --nodes N --writes 100 --runs R [--pause S] [--wait S]
    python benches/upstream/mesh.py spread  --nodes N --writes W [--wait S] [--raised]
    python benches/upstream/mesh.py catchup --writes W [--wait S]

Needs aether-zta 0.4.0. Started by ``benches/e2e`` (scenario ``mesh``) when AETHER_BENCH_UPSTREAM
names the interpreter. Every MeshNode runs in its own process (``mesh.py node``, started by this
driver, one asyncio loop each, as a relay would), listens on 127.0.0.1 port 0, and is driven over
stdin/stdout with one JSON line per command; it exits when its stdin closes. No ledger and no
gateway: ``MeshNode.set()`` is the write, the snapshot is what a node holds.

- ``ring``: N nodes; node i dials node i-1 and the last also dials node 0 (``connect_to``). Each
  run writes ``writes`` keys on node 0 (``await set()`` one after another, as fast as it goes);
  every node checks its snapshot every 5 ms and reports the first time it holds all of them. A run
  converges at the latest node's report; one that has not within ``--wait`` s is "never"
  (``null``), with each node's key count and peers. Runs are ``--pause`` s apart.
- ``spread``: the same ring; every node writes ``writes`` keys at once (throughput: writes/s from
  the first set to the last, and the time until every node holds every key).
- ``catchup``: nodes A and B, B dials A; one key written on A must reach B (the link works);
  B's process is stopped; ``writes`` keys are written on A; B is started again on the same port
  and dials A again (upstream never redials by itself); one more key on A must reach B; then
  for ``--wait`` s B is checked for the keys written while it was down.

Limits are upstream's defaults (per-peer budget: 200 messages burst, 100 per second; past it
the receiving node closes the link with 1008 "rate limit", and nothing redials it), or with
``--raised`` messages_per_second and messages_burst 1,000,000 (as ``relay.py`` runs).
Prints one JSON line per run on stdout; upstream's warnings go to stderr, prefixed by the node.
"""

import argparse
import asyncio
import json
import sys
import time

POLL_S = 0.005


def key(prefix: str, i: int) -> str:
    return f"{prefix}{i}"


# ---------------------------------------------------------------------------------------------
# One node (a child process).


async def node_main(node_id: str, port: int, raised: bool) -> None:
    import logging

    from aether_core._security import SecurityLimits
    from aether_core.mesh import MeshNode

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=f"[{node_id}] %(levelname)s %(message)s")
    limits = SecurityLimits(messages_per_second=1_000_000.0, messages_burst=1_000_000) if raised else None
    node = MeshNode(node_id, "127.0.0.1", port, limits=limits)
    await node.start()
    out = sys.stdout

    def emit(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    async def watch(prefix: str, count: int) -> None:
        nxt = 0
        while True:
            while nxt < count and node.get(key(prefix, nxt)) is not None:
                nxt += 1
            if nxt == count:
                emit({"event": "complete", "prefix": prefix, "t": time.monotonic()})
                return
            await asyncio.sleep(POLL_S)

    watchers = set()
    emit({"event": "listening", "port": node.port})
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            msg = json.loads(line)
            cmd = msg["cmd"]
            if cmd == "connect":
                try:
                    emit({"ok": True, "peer": await node.connect_to("127.0.0.1", msg["port"])})
                except Exception as e:  # noqa: BLE001 - reported to the driver
                    emit({"ok": False, "error": repr(e)})
            elif cmd == "peers":
                emit({"ok": True, "peers": sorted(node.peer_ids)})
            elif cmd == "watch":
                task = asyncio.ensure_future(watch(msg["prefix"], msg["count"]))
                watchers.add(task)
                task.add_done_callback(watchers.discard)
                emit({"ok": True})
            elif cmd == "write":
                t0 = time.monotonic()
                for i in range(msg["count"]):
                    await node.set(key(msg["prefix"], i), {"i": i, "tag": "bench"})
                emit({"ok": True, "t0": t0, "t1": time.monotonic()})
            elif cmd == "count":
                prefix = msg["prefix"]
                emit({"ok": True, "count": sum(1 for k in node.snapshot() if str(k).startswith(prefix))})
            else:
                emit({"ok": False, "error": f"unknown command {cmd!r}"})
    finally:
        for task in watchers:
            task.cancel()
        await node.stop()


# ---------------------------------------------------------------------------------------------
# The driver.


class Child:
    """A node process: commands in, replies and events out."""

    def __init__(self, proc, node_id: str, port: int):
        self.proc, self.id, self.port = proc, node_id, port
        self.replies: asyncio.Queue = asyncio.Queue()
        self.events: asyncio.Queue = asyncio.Queue()
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, node_id: str, raised: bool, port: int = 0) -> "Child":
        args = [sys.executable, __file__, "node", "--id", node_id, "--port", str(port)]
        if raised:
            args.append("--raised")
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"node {node_id} did not start")
        return cls(proc, node_id, json.loads(line)["port"])

    async def _read(self) -> None:
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            msg = json.loads(line)
            (self.events if "event" in msg else self.replies).put_nowait(msg)

    async def call(self, timeout: float = 30.0, **cmd):
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self.replies.get(), timeout)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.reader.cancel()


async def ring(n: int, raised: bool) -> list:
    nodes = list(await asyncio.gather(*(Child.start(f"n{i:02}", raised) for i in range(n))))
    for i in range(1, n):
        await nodes[i].call(port=nodes[i - 1].port, cmd="connect")
    if n > 2:
        await nodes[-1].call(port=nodes[0].port, cmd="connect")
    want = 2 if n > 2 else 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        peers = [len((await c.call(cmd="peers"))["peers"]) for c in nodes]
        if all(p >= want for p in peers):
            return nodes
        await asyncio.sleep(0.01)
    raise RuntimeError(f"ring of {n} did not link: peers {peers}")


async def measure(nodes: list, writers: list, prefixes: list, count: int, wait: float) -> dict:
    """Every node watches every writer's keys; the writers write; until all nodes hold all."""
    for c in nodes:
        for p in prefixes:
            await c.call(cmd="watch", prefix=p, count=count)
    writes = await asyncio.gather(*(w.call(cmd="write", prefix=p, count=count, timeout=wait + 60) for w, p in zip(writers, prefixes)))
    t0 = min(w["t0"] for w in writes)
    t1 = max(w["t1"] for w in writes)
    done = []
    deadline = t0 + wait
    try:
        for c in nodes:
            for _ in prefixes:
                ev = await asyncio.wait_for(c.events.get(), max(0.0, deadline - time.monotonic()))
                done.append(ev["t"])
        converged = max(done) - t0
    except asyncio.TimeoutError:
        converged = None
    counts = []
    for c in nodes:
        counts.append(sum([(await c.call(cmd="count", prefix=p))["count"] for p in prefixes]))
    peers = [len((await c.call(cmd="peers"))["peers"]) for c in nodes]
    return {"writes": count * len(writers), "write_s": t1 - t0, "converged_s": converged, "keys": counts, "peers": peers}


async def drain(nodes: list) -> None:
    for c in nodes:
        while not c.events.empty():
            c.events.get_nowait()


def emit(obj) -> None:
    print(json.dumps(obj), flush=True)


async def run_ring(a) -> None:
    nodes = await ring(a.nodes, a.raised)
    try:
        for r in range(a.runs):
            if r:
                await asyncio.sleep(a.pause)
            await drain(nodes)
            emit({"run": r, "nodes": a.nodes, **await measure(nodes, nodes[:1], [f"r{r}:"], a.writes, a.wait)})
    finally:
        await asyncio.gather(*(c.stop() for c in nodes))


async def run_spread(a) -> None:
    nodes = await ring(a.nodes, a.raised)
    try:
        prefixes = [f"s{c.id}:" for c in nodes]
        emit({"nodes": a.nodes, **await measure(nodes, nodes, prefixes, a.writes, a.wait)})
    finally:
        await asyncio.gather(*(c.stop() for c in nodes))


async def run_catchup(a) -> None:
    nodes = [await Child.start("A", a.raised), await Child.start("B", a.raised)]
    try:
        linked = (await nodes[1].call(cmd="connect", port=nodes[0].port))["ok"]
        before = await measure(nodes, nodes[:1], ["before:"], 1, a.wait)
        port = nodes[1].port
        await nodes[1].stop()
        t0 = time.monotonic()
        for_b = await nodes[0].call(cmd="write", prefix="down:", count=a.writes, timeout=a.wait + 60)
        nodes[1] = await Child.start("B", a.raised, port)
        restarted = time.monotonic()
        relinked = (await nodes[1].call(cmd="connect", port=nodes[0].port))["ok"]
        after = await measure(nodes, nodes[:1], ["after:"], 1, a.wait)
        await nodes[1].call(cmd="watch", prefix="down:", count=a.writes)
        try:
            ev = await asyncio.wait_for(nodes[1].events.get(), a.wait)
            caught_up = ev["t"] - restarted
        except asyncio.TimeoutError:
            caught_up = None
        missed = (await nodes[1].call(cmd="count", prefix="down:"))["count"]
        emit(
            {
                "writes": a.writes,
                "write_s": for_b["t1"] - t0,
                "linked": linked,
                "before_s": before["converged_s"],
                "relinked": relinked,
                "after_s": after["converged_s"],
                "caught_up_s": caught_up,
                "b_holds": missed,
                "waited_s": a.wait,
            }
        )
    finally:
        await asyncio.gather(*(c.stop() for c in nodes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["ring", "spread", "catchup", "node"])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pause", type=float, default=1.5)
    ap.add_argument("--wait", type=float, default=10.0)
    ap.add_argument("--raised", action="store_true")
    ap.add_argument("--id", default="n")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    if a.mode == "node":
        asyncio.run(node_main(a.id, a.port, a.raised))
    else:
        asyncio.run({"ring": run_ring, "spread": run_spread, "catchup": run_catchup}[a.mode](a))


if __name__ == "__main__":
    main()

'use strict';
// Against the real relay: AETHER_BIN=target/debug/aether-actix node --test tests/js/
// Two clients (two "browsers": separate storage, no shared channel) show sync, ack, supersede,
// a resume delta, paced outbox flush under the real rate limit, and an auth failure (4401).
// Skipped when AETHER_BIN is unset. Only 127.0.0.1, ephemeral ports, every wait bounded.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const { spawn } = require('node:child_process');
const { test, Aether, MemoryStorage, until, sleep, aetherBin } = require('./helpers');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');

function loadWebSocket() {
  try {
    return require('ws');
  } catch {
    return typeof WebSocket === 'function' ? WebSocket : null;
  }
}
const NodeWebSocket = loadWebSocket();
const skip = !BIN ? 'AETHER_BIN is not set' : !NodeWebSocket ? 'no WebSocket: npm install (ws) first' : false;

/** Starts the relay on 127.0.0.1:0 with a fresh ledger; resolves with {port, stop}. */
async function startRelay(extra = '') {
  assert.ok(fs.existsSync(BIN), 'AETHER_BIN does not exist: ' + BIN);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-js-'));
  const config = path.join(dir, 'aether.toml');
  const ledger = path.join(dir, 'l.jsonl');
  fs.writeFileSync(
    config,
    `[server]\nbind = "127.0.0.1:0"\nstatic_dir = ${JSON.stringify(STATIC)}\n[ledger]\npath = ${JSON.stringify(ledger)}\n${extra}`
  );
  const child = spawn(BIN, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'], env: Object.assign({}, process.env, { RUST_LOG: 'info' }) });
  let log = '';
  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('relay did not start in 20 s:\n' + log)), 20000);
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error('relay exited with ' + code + ':\n' + log));
    });
  });
  child.removeAllListeners('exit');
  const stop = async () => {
    if (child.exitCode !== null) return;
    child.kill('SIGTERM');
    await Promise.race([new Promise((r) => child.once('exit', r)), sleep(5000)]);
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { port, stop, log: () => log };
}

/** A WebSocket class that records frames and can refuse to connect (a network outage). */
function gatedSocket() {
  const gate = { blocked: false, sockets: [], frames: [] };
  gate.WebSocket = class GatedSocket {
    constructor(url) {
      if (gate.blocked) throw new Error('network down');
      this.url = url;
      const ws = new NodeWebSocket(url);
      this.ws = ws;
      this.frames = [];
      gate.sockets.push(this);
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      ws.onopen = (ev) => this.onopen && this.onopen(ev);
      ws.onerror = (ev) => this.onerror && this.onerror(ev);
      ws.onclose = (ev) => this.onclose && this.onclose({ code: ev.code, reason: String(ev.reason || '') });
      ws.onmessage = (ev) => {
        const data = typeof ev.data === 'string' ? ev.data : String(ev.data);
        this.frames.push(JSON.parse(data));
        gate.frames.push(JSON.parse(data));
        this.onmessage && this.onmessage({ data });
      };
    }
    get readyState() {
      return this.ws.readyState;
    }
    send(text) {
      this.ws.send(text);
    }
    close(code, reason) {
      this.ws.close(code, reason);
    }
  };
  return gate;
}

function get(port, pathname) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: pathname, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('timeout')));
  });
}

test('the real relay: sync, ack, supersede, resume delta, paced flush, auth failure', { skip, timeout: 90000 }, async (t) => {
  const relay = await startRelay();
  const url = `ws://127.0.0.1:${relay.port}/ws`;
  const clients = [];
  const open = (gate, opts = {}) => {
    const c = new Aether(url, Object.assign({ WebSocket: gate.WebSocket, storage: new MemoryStorage(), BroadcastChannel: null }, opts));
    clients.push(c);
    return c;
  };
  try {
    await t.test('the relay serves the client files', async () => {
      for (const file of ['/aether.js', '/aether.mjs', '/aether-react.mjs']) {
        const res = await get(relay.port, file);
        assert.equal(res.status, 200, file);
        assert.equal(res.body, fs.readFileSync(path.join(STATIC, file.slice(1)), 'utf8'));
      }
    });

    const gateA = gatedSocket();
    const gateB = gatedSocket();
    const A = open(gateA);
    const B = open(gateB);
    await until(() => A.connected && B.connected, 10000, 'both connected');

    await t.test('protocol v2 is spoken; hello came before connected', () => {
      assert.equal(A.protocol, 2);
      assert.equal(B.protocol, 2);
      assert.match(A.clientColor, /^hsl\(\d+, 78%, 62%\)$/);
      assert.equal(gateA.sockets[0].frames[0].type, 'hello');
      assert.equal(gateA.sockets[0].frames[0].v, 2);
      assert.ok(gateA.sockets[0].url.includes('v=2'));
    });

    await t.test('sync and ack', async () => {
      const w = A.set('card:1', { title: 'first', tags: ['a'] });
      const done = await w.durable;
      assert.match(done.stamp, /^\d{20}\.\d{10}\.alpha$/);
      assert.equal(typeof done.seq, 'number');
      // The own echo (origin = our id) may settle it first; the ack follows with the same stamp.
      const ack = await until(() => gateA.frames.find((f) => f.type === 'ack'), 5000, 'ack');
      assert.equal(ack.stamp, done.stamp);
      const echo = gateA.frames.find((f) => f.type === 'set' && f.key === 'card:1');
      assert.equal(echo.origin, A.clientId);
      assert.equal(echo.stamp, done.stamp);
      await until(() => B.get('card:1') && B.get('card:1').title === 'first', 5000, 'B sees it');
      await A.set('nothing', null).durable;
      await until(() => B.has('nothing'), 5000);
      assert.equal(B.get('nothing'), null);
    });

    await t.test('supersede fires for the loser only', async () => {
      const lostA = [];
      const lostB = [];
      A.onSupersede((...args) => lostA.push(args));
      B.onSupersede((...args) => lostB.push(args));
      await A.set('race', 'A').durable;
      await B.set('race', 'B').durable; // later: B wins
      await until(() => lostA.length === 1, 5000, 'A told');
      assert.deepEqual(lostA, [['race', 'A', 'B']]);
      await sleep(50);
      assert.deepEqual(lostB, []);
      assert.equal(A.get('race'), 'B');
    });

    await t.test('resume: a reconnect gets a delta of what changed meanwhile', async () => {
      await until(() => B.get('race') === 'B');
      const before = gateB.sockets.length;
      gateB.blocked = true;
      gateB.sockets[gateB.sockets.length - 1].close();
      await until(() => !B.connected, 5000, 'B disconnected');
      await A.set('while-away', 42).durable;
      await A.delete('card:1').durable;
      gateB.blocked = false;
      await until(() => gateB.sockets.length > before && B.connected, 10000, 'B reconnected');
      const sock = gateB.sockets[gateB.sockets.length - 1];
      assert.ok(/[?&]resume=[0-9a-f]+\.\d+/.test(sock.url), sock.url);
      await until(() => sock.frames.length >= 2, 5000);
      assert.equal(sock.frames[1].type, 'delta');
      assert.deepEqual(sock.frames[1].data, { 'while-away': 42 });
      assert.deepEqual(sock.frames[1].deleted, ['card:1']);
      assert.equal(B.get('while-away'), 42);
      assert.equal(B.has('card:1'), false);
      assert.equal(B.get('nothing'), null, 'unchanged keys kept');
    });

    await t.test('outbox: 260 offline writes are flushed under the real rate limit', async () => {
      const gateC = gatedSocket();
      gateC.blocked = true;
      const C = open(gateC);
      for (let i = 0; i < 260; i++) C.set('bulk:' + i, i);
      await sleep(50);
      gateC.blocked = false;
      await until(() => C.connected, 10000, 'C connected');
      await Promise.race([C.whenDurable(), sleep(20000).then(() => Promise.reject(new Error('not durable in 20 s')))]);
      assert.equal(gateC.sockets.length, 1, 'one connection: the relay never closed it for rate');
      assert.deepEqual(gateC.frames.filter((f) => f.type === 'nack'), []);
      await until(() => A.get('bulk:259') === 259, 10000, 'A sees the last one');
      for (let i = 0; i < 260; i++) assert.equal(A.get('bulk:' + i), i);
      assert.equal(C.status.code, null, 'never closed: ' + JSON.stringify(C.status));
    });
  } finally {
    for (const c of clients) c.close();
    await relay.stop();
  }

  await t.test('auth failure: 4401, reported, no reconnect', async () => {
    const secured = await startRelay('[auth]\ntoken = "s3cret"\n');
    try {
      const gate = gatedSocket();
      const bad = new Aether(`ws://127.0.0.1:${secured.port}/ws`, { WebSocket: gate.WebSocket, storage: new MemoryStorage(), BroadcastChannel: null, authToken: 'wrong' });
      const errors = [];
      bad.onError((e) => errors.push(e));
      await until(() => errors.length === 1, 10000, 'auth error');
      assert.equal(errors[0].code, 4401);
      assert.equal(errors[0].fatal, true);
      await sleep(500);
      assert.equal(gate.sockets.length, 1);
      bad.reconnect({ authToken: 's3cret' });
      await until(() => bad.connected, 10000, 'connected with the right token');
      bad.close();
    } finally {
      await secured.stop();
    }
  });
});

test('a client closed while its socket is still opening (Node ws) throws nothing', { skip: !NodeWebSocket && 'no WebSocket: npm install (ws) first', timeout: 20000 }, async () => {
  // A listener that takes the connection and never answers its upgrade: the socket stays opening.
  const held = [];
  const server = require('node:net').createServer((socket) => held.push(socket));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const a = new Aether(`ws://127.0.0.1:${server.address().port}/ws`, { WebSocket: NodeWebSocket, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => held.length === 1, 5000, 'the connection attempt');
    // Node's ws reports the abandoned opening as an error event; one without a listener would be
    // thrown as an uncaught exception, failing this test.
    a.close();
    await sleep(200);
    assert.equal(a.connected, false);
  } finally {
    held.forEach((socket) => socket.destroy());
    server.close();
  }
});

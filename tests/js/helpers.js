'use strict';
// Test doubles for the browser client: localStorage, BroadcastChannel and an in-process relay
// that speaks protocol v1 (upstream) or v2 (aether-actix) to a mocked WebSocket.

const path = require('node:path');
const nodeTest = require('node:test');

/** node:test's test() with a time limit by default, so nothing can hang a run. */
function test(name, opts, fn) {
  if (typeof opts === 'function') {
    fn = opts;
    opts = {};
  }
  return nodeTest(name, Object.assign({ timeout: 30000 }, opts), fn);
}

const Aether = require(path.join(__dirname, '..', '..', 'static', 'aether.js'));

const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `predicate()` is truthy, polling; fails after `ms`. */
async function until(predicate, ms = 3000, what = 'condition') {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await sleep(5);
  }
}

/** localStorage with an optional quota in bytes (of keys and values), like a browser's. */
class MemoryStorage {
  constructor(quota = Infinity) {
    this.quota = quota;
    this.map = new Map();
    this.writes = 0;
  }
  get length() {
    return this.map.size;
  }
  key(i) {
    return Array.from(this.map.keys())[i] ?? null;
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    v = String(v);
    let size = k.length + v.length;
    for (const [key, value] of this.map) if (key !== k) size += key.length + value.length;
    if (size > this.quota) {
      const err = new Error('QuotaExceededError');
      err.name = 'QuotaExceededError';
      throw err;
    }
    this.writes++;
    this.map.set(k, v);
  }
  removeItem(k) {
    this.map.delete(k);
  }
  clear() {
    this.map.clear();
  }
}

/** A set of BroadcastChannels that see each other (one browser profile). */
class ChannelBus {
  constructor() {
    this.channels = new Set();
    this.held = null; // when an array, messages wait here until release()
    this.log = [];
    const bus = this;
    this.BroadcastChannel = class {
      constructor(name) {
        this.name = name;
        this.onmessage = null;
        this.closed = false;
        bus.channels.add(this);
      }
      postMessage(data) {
        if (this.closed) throw new Error('InvalidStateError');
        const copy = structuredClone(data);
        bus.log.push({ name: this.name, data: copy });
        for (const ch of bus.channels) {
          if (ch === this || ch.name !== this.name) continue;
          const deliver = () => {
            if (!ch.closed && ch.onmessage) ch.onmessage({ data: structuredClone(copy) });
          };
          if (bus.held) bus.held.push({ to: ch, data: copy, deliver });
          else setImmediate(deliver);
        }
      }
      close() {
        this.closed = true;
        bus.channels.delete(this);
      }
    };
  }
  hold() {
    this.held = [];
  }
  /** Delivers held messages, in the order `reorder(list)` returns (default: as posted). */
  release(reorder) {
    let queue = this.held || [];
    this.held = null;
    if (reorder) queue = reorder(queue);
    for (const item of queue) item.deliver();
  }
}

function pad(n, width) {
  return String(n).padStart(width, '0');
}

/**
 * An in-process relay. `version: 2` answers `?v=2` connections with protocol v2 (like
 * aether-actix); `version: 1` ignores `?v=2` and speaks upstream's v1 only. `token` is the
 * shared secret, or a predicate on the presented token. A v2 `hello` names the `?room=` (one map
 * for all rooms: room isolation is the real relay's, tested in rooms.test.js); `helloExtra(conn,
 * url)` adds fields (`user`, `access`, `exp`); `onAuth(conn, msg)` sees `auth` frames sent after
 * `hello` (token refresh).
 */
class FakeRelay {
  constructor({ version = 2, burst = 200, rate = 100, token = null, node = 'alpha' } = {}) {
    this.version = version;
    this.burst = burst;
    this.rate = rate;
    this.token = token;
    this.node = node;
    this.run = Math.random().toString(16).slice(2, 18).padEnd(16, '0');
    this.state = new Map();
    this.changedAt = new Map();
    this.seq = 0;
    this.clock = 0;
    this.down = false;
    this.conns = new Set();
    this.urls = [];
    this.inbound = []; // every parsed client message: {conn, msg}
    this.closes = []; // closes the relay initiated: {conn, code, reason}
    this.holdEchoes = false;
    this.heldOps = [];
    const relay = this;

    this.WebSocket = class FakeSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        this.conn = null;
        relay.urls.push(url);
        setImmediate(() => relay._accept(this));
      }
      send(text) {
        if (this.readyState !== 1) throw new Error('InvalidStateError: not open');
        const conn = this.conn;
        setImmediate(() => relay._receive(conn, text));
      }
      close(code = 1000) {
        if (this.readyState >= 2) return;
        this.readyState = 2;
        const conn = this.conn;
        setImmediate(() => relay._drop(conn, code, '', false));
      }
    };
  }

  _accept(sock) {
    if (this.down) {
      sock.readyState = 3;
      sock.onclose && sock.onclose({ code: 1006, reason: '' });
      return;
    }
    const url = new URL(sock.url);
    const v2 = this.version === 2 && url.searchParams.get('v') === '2';
    const conn = {
      sock,
      v2,
      id: crypto.randomUUID(),
      color: 'hsl(' + Math.floor(Math.random() * 360) + ', 78%, 62%)',
      tokens: null,
      at: Date.now(),
      frames: [],
      open: true,
      authed: !this.token,
    };
    sock.conn = conn;
    sock.readyState = 1;
    this.conns.add(conn);
    sock.onopen && sock.onopen({});
    if (this.token) {
      const presented = url.searchParams.get('auth_token');
      if (presented !== null) {
        if (!this._tokenOk(presented)) return this._close(conn, v2 ? 4401 : 1008, 'auth failed');
        conn.authed = true;
      } else {
        conn.awaitingAuth = true;
        return;
      }
    }
    this._welcome(conn, url);
  }

  _tokenOk(token) {
    return typeof this.token === 'function' ? !!this.token(token) : token === this.token;
  }

  _welcome(conn, url) {
    const hello = { type: 'hello', id: conn.id, color: conn.color };
    if (conn.v2) Object.assign(hello, { v: 2, node: this.node });
    if (conn.v2 && url.searchParams.get('room')) hello.room = url.searchParams.get('room');
    if (conn.v2 && this.helloExtra) Object.assign(hello, this.helloExtra(conn, url));
    if (typeof hello.user === 'string') conn.user = hello.user;
    this._send(conn, hello);
    if (this.closeAfterHello) return setImmediate(() => this._close(conn, 1000, '')); // a flapping proxy
    const token = this.run + '.' + this.seq;
    const resume = conn.v2 ? url.searchParams.get('resume') : null;
    const since = this._since(resume);
    if (conn.v2 && since !== null) {
      const data = {};
      const deleted = [];
      for (const [key, at] of this.changedAt) {
        if (at <= since) continue;
        if (this.state.has(key)) data[key] = this.state.get(key);
        else deleted.push(key);
      }
      this._send(conn, { type: 'delta', data, deleted: deleted.sort(), resume: token });
    } else {
      const snap = { type: 'snapshot', data: Object.fromEntries(this.state) };
      if (conn.v2) snap.resume = token;
      this._send(conn, snap);
    }
  }

  _since(resume) {
    if (!resume) return null;
    const dot = resume.lastIndexOf('.');
    if (dot < 0 || resume.slice(0, dot) !== this.run) return null;
    const seq = Number(resume.slice(dot + 1));
    return Number.isInteger(seq) && seq <= this.seq ? seq : null;
  }

  _send(conn, frame) {
    if (!conn.open) return;
    const text = typeof frame === 'string' ? frame : JSON.stringify(frame);
    conn.frames.push(JSON.parse(text));
    setImmediate(() => {
      if (conn.open && conn.sock.onmessage) conn.sock.onmessage({ data: text });
    });
  }

  _close(conn, code, reason) {
    this.closes.push({ conn, code, reason });
    this._drop(conn, code, reason, true);
  }

  _drop(conn, code, reason, notify) {
    if (!conn || !conn.open) return;
    conn.open = false;
    this.conns.delete(conn);
    conn.sock.readyState = 3;
    const sock = conn.sock;
    setImmediate(() => sock.onclose && sock.onclose({ code, reason }));
    if (conn.welcomed !== false) {
      for (const other of this.conns) this._send(other, { type: 'presence-leave', id: conn.id });
    }
    void notify;
  }

  _receive(conn, text) {
    if (!conn || !conn.open) return;
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      msg = null;
    }
    if (conn.awaitingAuth) {
      conn.awaitingAuth = false;
      if (!msg || msg.type !== 'auth' || !this._tokenOk(msg.token)) return this._close(conn, conn.v2 ? 4401 : 1008, 'auth failed');
      conn.authed = true;
      this._welcome(conn, new URL(conn.sock.url));
      return;
    }
    // Token bucket: the first message is free and creates a full bucket.
    if (conn.tokens === null) {
      conn.tokens = this.burst;
      conn.at = Date.now();
    } else {
      const t = Date.now();
      conn.tokens = Math.min(this.burst, conn.tokens + ((t - conn.at) * this.rate) / 1000);
      conn.at = t;
      if (conn.tokens < 1) return this._close(conn, conn.v2 ? 4429 : 1008, 'rate limit');
      conn.tokens -= 1;
    }
    this.inbound.push({ conn, msg });
    if (!msg || typeof msg !== 'object') return;
    if (msg.type === 'presence') {
      for (const other of this.conns) {
        if (other === conn) continue;
        const frame = { type: 'presence', id: conn.id, color: conn.color, x: msg.x | 0, y: msg.y | 0 };
        if (other.v2 && conn.user) frame.user = conn.user;
        this._send(other, frame);
      }
      return;
    }
    if (msg.type === 'auth') {
      if (this.onAuth) this.onAuth(conn, msg);
      return;
    }
    if (msg.type === 'ping') {
      if (conn.v2 && !this.deaf) this._send(conn, { type: 'pong' });
      return;
    }
    if (this.deaf) return; // a dead connection that looks open: nothing comes back
    if (msg.type !== 'set' && msg.type !== 'delete') return;
    if (typeof msg.key !== 'string' || !msg.key || msg.key.length > 256) {
      if (conn.v2 && msg.ref !== undefined) this._send(conn, { type: 'nack', ref: msg.ref, reason: 'bad_key' });
      return;
    }
    if (msg.type === 'set' && JSON.stringify(msg.value === undefined ? null : msg.value).length > 32768) {
      if (conn.v2 && msg.ref !== undefined) this._send(conn, { type: 'nack', ref: msg.ref, reason: 'bad_value' });
      return;
    }
    const op = { type: msg.type, key: msg.key, value: msg.type === 'set' ? (msg.value === undefined ? null : msg.value) : undefined, origin: conn.id, ref: msg.ref, writer: conn };
    if (this.holdEchoes) this.heldOps.push(op);
    else this._apply(op);
  }

  /** Applies the held writes (in arrival order, or in the order given). */
  releaseEchoes(order) {
    const ops = order ? order.map((i) => this.heldOps[i]) : this.heldOps;
    this.heldOps = [];
    this.holdEchoes = false;
    for (const op of ops) this._apply(op);
  }

  _stamp() {
    this.clock += 1;
    return pad(1700000000000000000n + BigInt(this.clock), 20) + '.' + pad(0, 10) + '.' + this.node;
  }

  _apply(op) {
    this.seq += 1;
    const seq = this.seq;
    const stamp = this._stamp();
    if (op.type === 'set') this.state.set(op.key, op.value);
    else this.state.delete(op.key);
    this.changedAt.set(op.key, seq);
    const v1 = op.type === 'set' ? { type: 'set', key: op.key, value: op.value } : { type: 'delete', key: op.key };
    const v2 = Object.assign({}, v1, { stamp, origin: op.origin, seq });
    for (const conn of this.conns) this._send(conn, conn.v2 ? v2 : v1);
    if (op.writer && op.writer.v2 && op.ref !== undefined && op.writer.open) {
      this._send(op.writer, { type: 'ack', ref: op.ref, key: op.key, stamp, seq });
    }
    return { seq, stamp };
  }

  /** A write by some other client (not connected here). */
  write(key, value, origin = crypto.randomUUID()) {
    return this._apply({ type: value === undefined ? 'delete' : 'set', key, value, origin, writer: null });
  }

  /** Closes every connection with `code`, `reason` (the client sees them as relay closes). */
  kill(code = 1001, reason = 'server shutting down') {
    for (const conn of Array.from(this.conns)) this._close(conn, code, reason);
  }

  /** A restart: state kept (the ledger), new run, sequence numbers from 0. */
  restart() {
    this.kill(1001, 'server shutting down');
    this.run = Math.random().toString(16).slice(2, 18).padEnd(16, '0');
    this.seq = 0;
    this.changedAt = new Map();
  }

  /** Messages received from clients, optionally only of one type. */
  received(type) {
    return this.inbound.map((x) => x.msg).filter((m) => m && (!type || m.type === type));
  }
}

/** A browser profile: one localStorage, one BroadcastChannel bus, one relay. */
function browser({ relay = new FakeRelay(), storage = new MemoryStorage(), bus = new ChannelBus() } = {}) {
  const clients = [];
  return {
    relay,
    storage,
    bus,
    clients,
    open(url = 'ws://relay.test/ws', opts = {}) {
      const client = new Aether(url, Object.assign({ WebSocket: relay.WebSocket, storage, BroadcastChannel: bus.BroadcastChannel }, opts));
      clients.push(client);
      return client;
    },
    closeAll() {
      for (const c of clients) c.close();
    },
  };
}

/**
 * The relay binary from AETHER_BIN (relative to the working directory or to the repository root),
 * or null when unset.
 */
function aetherBin() {
  const bin = process.env.AETHER_BIN;
  if (!bin) return null;
  const fromCwd = path.resolve(bin);
  const fromRoot = path.resolve(__dirname, '..', '..', bin);
  return require('node:fs').existsSync(fromCwd) ? fromCwd : fromRoot;
}

const STATIC_TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.ts': 'text/plain; charset=utf-8',
  '.mts': 'text/plain; charset=utf-8',
  '.md': 'text/plain; charset=utf-8',
};

/**
 * A tiny static HTTP server for `root` on 127.0.0.1 (an ephemeral port): GET/HEAD only, `dir/`
 * serves `dir/index.html`, nothing outside `root`. Lets a demo page reload while the relay is down
 * (open it with `?relay=ws://…`). Resolves {port, url, close()}.
 */
async function staticServer(root) {
  const http = require('node:http');
  const fs = require('node:fs');
  root = path.resolve(root);
  const server = http.createServer((req, res) => {
    const fail = (code) => {
      res.writeHead(code, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(code + '\n');
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405);
    let rel;
    try {
      rel = decodeURIComponent(new URL(req.url, 'http://127.0.0.1').pathname);
    } catch {
      return fail(400);
    }
    let file = path.resolve(root, '.' + rel);
    if (file !== root && !file.startsWith(root + path.sep)) return fail(403);
    try {
      if (fs.statSync(file).isDirectory()) file = path.join(file, 'index.html');
      const body = fs.readFileSync(file);
      res.writeHead(200, {
        'content-type': STATIC_TYPES[path.extname(file).toLowerCase()] || 'application/octet-stream',
        'content-length': body.length,
        'cache-control': 'no-store',
      });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      fail(404);
    }
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const port = server.address().port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close() {
      if (typeof server.closeAllConnections === 'function') server.closeAllConnections();
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}

/** Debian's Chromium (or CHROMIUM=<path>), or null when there is none. */
function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  const { spawnSync } = require('node:child_process');
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const r = spawnSync('sh', ['-c', 'command -v ' + name], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  }
  return null;
}

/** The `ws` package, or null before `npm install`. */
function loadWs() {
  try {
    return require('ws');
  } catch {
    return null;
  }
}

/** Why a browser test must skip (no relay binary, no Chromium, no npm install), or false. */
function browserSkip(bin) {
  return !bin ? 'AETHER_BIN is not set' : !findChromium() ? 'no Chromium' : !loadWs() ? 'npm install first' : false;
}

/** Polls until the async predicate `fn()` resolves truthy, failing after `ms`. */
async function untilAsync(fn, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await sleep(50);
  }
}

/** Where browser tests put screenshots: static/<page>/screenshots/ (`page` defaults to `demos`) with
 * AETHER_SCREENSHOTS=1, else a temporary directory that is removed when the process exits. */
function screenshotDir(staticDir, page = 'demos') {
  const fs = require('node:fs');
  const os = require('node:os');
  if (process.env.AETHER_SCREENSHOTS === '1') return path.join(staticDir, page, 'screenshots');
  const dir = path.join(os.tmpdir(), `aether-shots-${process.pid}`);
  fs.mkdirSync(dir, { recursive: true });
  process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

module.exports = {
  screenshotDir, findChromium, loadWs, browserSkip, untilAsync, test, Aether, MemoryStorage, ChannelBus, FakeRelay, browser, tick, sleep, until, aetherBin, staticServer };

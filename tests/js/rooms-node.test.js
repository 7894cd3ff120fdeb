'use strict';
// The client's side of rooms and tokens (issue 12) against the in-process FakeRelay: the URL and
// first frame, token functions (per connect, refresh before `exp`, one retry after 4401), the
// close codes that stop (4403, 4400, 4401 with a fixed token), a read-only write rolled back by
// its `forbidden` nack, presence `user`, and storage kept per room. The same behaviours against
// the real relay in Chromium: rooms.test.js.

const assert = require('node:assert/strict');
const { test, Aether, MemoryStorage, FakeRelay, browser, until, sleep, tick } = require('./helpers');

const URL_ = 'ws://relay.test/ws';

function params(url) {
  return new URL(url).searchParams;
}

test('room and token go in the URL and the first frame; authToken stays an alias', async () => {
  const relay = new FakeRelay({ token: 'secret' });
  const b = browser({ relay });
  const a = b.open(URL_, { room: 'board-42', token: 'secret' });
  await until(() => a.connected, 2000, 'connected');
  const q = params(relay.urls[0]);
  assert.equal(q.get('room'), 'board-42');
  assert.equal(q.get('auth_token'), 'secret');
  assert.equal(q.get('v'), '2');
  assert.equal(a.room, 'board-42');
  assert.equal(a.access, 'write');
  assert.equal(a.user, null);
  const old = b.open(URL_, { authToken: 'secret' });
  await until(() => old.connected, 2000, 'authToken alias');
  assert.equal(params(relay.urls[1]).get('room'), null, 'no room: the default room');
  assert.equal(old.room, null);
  assert.throws(() => new Aether(URL_, { room: '', WebSocket: null }), TypeError);
  assert.throws(() => new Aether(URL_, { room: 42, WebSocket: null }), TypeError);
  b.closeAll();
});

test('a token function is asked on every connect (sync or async), and its token presented', async () => {
  let n = 0;
  const relay = new FakeRelay({ token: (t) => /^tok-\d+$/.test(t) });
  const b = browser({ relay });
  const a = b.open(URL_, { room: 'r', token: () => Promise.resolve('tok-' + ++n), minReconnectDelayMs: 10 });
  await until(() => a.connected, 2000, 'connected');
  assert.equal(params(relay.urls[0]).get('auth_token'), 'tok-1');
  assert.deepEqual(relay.received('auth')[0], { type: 'auth', token: 'tok-1' });
  relay.kill(1001, 'going away');
  await until(() => !a.connected, 2000, 'closed');
  await until(() => a.connected, 2000, 'reconnected');
  assert.equal(params(relay.urls[relay.urls.length - 1]).get('auth_token'), 'tok-2', 'a fresh token for the new connection');
  let m = 0;
  const s = b.open(URL_, { token: () => 'tok-' + (100 + ++m) });
  await until(() => s.connected, 2000, 'sync function');
  assert.equal(m, 1, 'asked once for one connect');
  b.closeAll();
});

test('a function that fails is a failed attempt: reported, retried after the backoff', async () => {
  let calls = 0;
  const relay = new FakeRelay({ token: 'good' });
  const b = browser({ relay });
  const errors = [];
  const a = b.open(URL_, {
    token: () => (++calls < 3 ? Promise.reject(new Error('offline')) : 'good'),
    minReconnectDelayMs: 10,
    maxReconnectDelayMs: 40,
  });
  a.onError((e) => errors.push(e));
  await until(() => a.connected, 3000, 'connected after two failures');
  assert.equal(calls, 3);
  assert.equal(errors.length, 2);
  assert.equal(errors[0].type, 'auth');
  assert.equal(errors[0].fatal, false);
  b.closeAll();
});

test('refresh: before exp the function is asked and its token sent on the live connection', async () => {
  let n = 0;
  const relay = new FakeRelay({ token: (t) => t.startsWith('jwt-') });
  relay.helloExtra = () => ({ user: 'alice', access: 'write', exp: Math.floor(Date.now() / 1000) + 2 });
  const refreshed = [];
  relay.onAuth = (conn, msg) => {
    if (msg.token === params(conn.sock.url).get('auth_token')) return; // the first frame, as ever
    refreshed.push({ conn, token: msg.token, at: Date.now() });
    relay._send(conn, { type: 'auth_ok', exp: Math.floor(Date.now() / 1000) + 2, access: 'read' });
  };
  const b = browser({ relay });
  const a = b.open(URL_, { room: 'doc', token: async () => 'jwt-' + ++n });
  const statuses = [];
  a.onStatus((c) => statuses.push(c));
  await until(() => a.connected, 2000, 'connected');
  assert.equal(a.user, 'alice');
  assert.equal(a.access, 'write');
  const t0 = Date.now();
  await until(() => refreshed.length >= 2, 6000, 'two refreshes');
  assert.ok(Date.now() - t0 < 5000, 'refreshed before each expiry');
  assert.equal(refreshed[0].conn, refreshed[1].conn, 'on the same connection');
  assert.deepEqual(refreshed.map((r) => r.token), ['jwt-2', 'jwt-3']);
  assert.equal(a.access, 'read', 'auth_ok sets the access');
  assert.deepEqual(statuses, [false, true], 'no visible disconnect');
  assert.equal(relay.urls.length, 1);
  b.closeAll();
});

test('refresh: no function, or a function that throws: nothing is sent; 4401 then retries once with a fresh token', async () => {
  const relay = new FakeRelay({ token: (t) => t !== 'bad' });
  relay.helloExtra = () => ({ user: 'bob', access: 'write', exp: Math.floor(Date.now() / 1000) + 1 });
  const b = browser({ relay });
  const fixed = b.open(URL_, { token: 'static' });
  let calls = 0;
  const fn = b.open(URL_, {
    token: () => {
      calls++;
      if (calls === 2) throw new Error('no refresh now');
      return 'fresh-' + calls;
    },
  });
  await until(() => fixed.connected && fn.connected, 2000, 'both connected');
  await sleep(1200);
  assert.equal(relay.received('auth').filter((m) => m.token !== 'static' && !/^fresh-1$/.test(m.token)).length, 0, 'no refresh frame');
  assert.equal(calls, 2, 'the function was asked and threw');
  // The relay closes both at expiry.
  const fixedErrors = [];
  fixed.onError((e) => fixedErrors.push(e));
  for (const conn of Array.from(relay.conns)) relay._close(conn, 4401, 'token expired');
  await until(() => fixed.status.fatal, 2000, 'fixed token stops');
  assert.equal(fixedErrors[0].type, 'auth');
  assert.equal(fixedErrors[0].code, 4401);
  await until(() => fn.connected, 2000, 'function: reconnected with a fresh token');
  assert.equal(calls, 3);
  assert.equal(params(relay.urls[relay.urls.length - 1]).get('auth_token'), 'fresh-3');
  b.closeAll();
});

test('4401 twice in a row with a function stops; 4403 and 4400 stop with their types', async () => {
  const relay = new FakeRelay({ token: () => false });
  const b = browser({ relay });
  let calls = 0;
  const errors = [];
  const a = b.open(URL_, { token: () => 'x' + ++calls, minReconnectDelayMs: 10 });
  a.onError((e) => errors.push(e));
  await until(() => a.status.fatal, 2000, 'stopped');
  assert.equal(calls, 2, 'one retry with a fresh token');
  assert.equal(errors.length, 1);
  assert.deepEqual([errors[0].type, errors[0].code, errors[0].fatal], ['auth', 4401, true]);

  for (const [code, reason, type] of [[4403, 'forbidden', 'forbidden'], [4400, 'bad room', 'room'], [1008, 'forbidden', 'forbidden']]) {
    const r = new FakeRelay();
    const bb = browser({ relay: r });
    const c = bb.open(URL_, { room: 'secret-room', token: () => 'tok', minReconnectDelayMs: 10 });
    const errs = [];
    c.onError((e) => errs.push(e));
    await until(() => c.connected, 2000, 'connected');
    const before = r.urls.length;
    r.kill(code, reason);
    await until(() => c.status.fatal, 2000, 'stopped after ' + code);
    await sleep(100);
    assert.equal(r.urls.length, before, 'no reconnect after ' + code);
    assert.deepEqual([errs[0].type, errs[0].code, errs[0].reason], [type, code, reason]);
    // reconnect() tries again.
    c.reconnect();
    await until(() => c.connected, 2000, 'reconnect() after ' + code);
    bb.closeAll();
  }
  b.closeAll();
});

test('a relay that answers without the room (no rooms there) is not used', async () => {
  for (const version of [1, 2]) {
    const relay = new FakeRelay({ version });
    if (version === 2) relay.helloExtra = () => ({ room: undefined });
    relay.write('default-room-key', 1);
    const b = browser({ relay });
    const errors = [];
    const a = b.open(URL_, { room: 'team-a' });
    a.onError((e) => errors.push(e));
    await until(() => a.status.fatal, 2000, 'stopped');
    await sleep(50);
    assert.equal(a.has('default-room-key'), false, 'nothing of the one map shown');
    assert.equal(errors[0].type, 'room');
    assert.equal(relay.urls.length, 1);
    b.closeAll();
  }
});

test('read-only: a write is shown, then rolled back by its forbidden nack and never sent again', async () => {
  const relay = new FakeRelay();
  relay.helloExtra = () => ({ user: 'reader', access: 'read', exp: Math.floor(Date.now() / 1000) + 3600 });
  relay.write('title', 'original');
  const b = browser({ relay });
  const a = b.open(URL_, { room: 'r', token: 'reader-token' });
  await until(() => a.connected && a.get('title') === 'original', 2000, 'snapshot');
  assert.equal(a.access, 'read');
  // The fake relay applies writes; answer this one as the real one does for a read grant.
  relay.holdEchoes = true;
  const seen = [];
  a.on('title', (v) => seen.push(v));
  const w = a.set('title', 'vandalised');
  assert.equal(a.get('title'), 'vandalised', 'applied locally at once');
  await until(() => relay.heldOps.length === 1, 2000, 'sent');
  const op = relay.heldOps.pop();
  relay.holdEchoes = false;
  relay._send(op.writer, { type: 'nack', ref: op.ref, reason: 'forbidden' });
  await assert.rejects(w.durable, (e) => e.reason === 'forbidden');
  assert.equal(a.get('title'), 'original', 'rolled back');
  assert.deepEqual(seen, ['vandalised', 'original']);
  assert.equal(a.pendingWrites(), 0);
  relay.kill(1001, 'restart');
  await until(() => a.connected, 3000, 'reconnected');
  await sleep(50);
  assert.equal(relay.received('set').length, 1, 'never sent again');
  b.closeAll();
});

test('presence carries the sender\'s user to callbacks and to sibling tabs', async () => {
  const relay = new FakeRelay();
  relay.helloExtra = (conn, url) => ({ user: params(url.href).get('auth_token'), access: 'write', exp: Math.floor(Date.now() / 1000) + 3600 });
  const one = browser({ relay });
  const two = browser({ relay });
  const a = one.open(URL_, { room: 'r', token: 'alice' });
  const c = two.open(URL_, { room: 'r', token: 'carol' });
  const sibling = two.open(URL_, { room: 'r', token: 'carol', WebSocket: null });
  const got = [];
  const bySibling = [];
  c.onPresence((id, x, y, color, user) => got.push([x, y, user]));
  sibling.onPresence((id, x, y, color, user) => bySibling.push([x, y, user]));
  await until(() => a.connected && c.connected, 2000, 'connected');
  assert.equal(a.user, 'alice');
  a.sendPresence(3, 4);
  await until(() => got.length === 1 && bySibling.length === 1, 2000, 'presence');
  assert.deepEqual(got[0], [3, 4, 'alice']);
  assert.deepEqual(bySibling[0], [3, 4, 'alice']);
  one.closeAll();
  two.closeAll();
});

test('cache, outbox, client id and tab channel are per room', async () => {
  const storage = new MemoryStorage();
  const relay = new FakeRelay();
  const b = browser({ relay, storage });
  const a = b.open(URL_, { room: 'team-a', WebSocket: null });
  const c = b.open(URL_, { room: 'team-b', WebSocket: null });
  const d = b.open(URL_, { WebSocket: null });
  a.set('k', 'from a');
  await tick();
  await tick();
  assert.equal(c.get('k'), undefined, 'another room in the same browser does not see it');
  assert.equal(d.get('k'), undefined, 'nor does the default room');
  const keys = Array.from(storage.map.keys());
  assert.ok(keys.some((k) => k.startsWith('aether::state::' + URL_ + '::room::team-a::outbox::')), keys.join('\n'));
  assert.ok(!keys.some((k) => k.includes('team-b') && k.includes('outbox')));
  // A reload of team-b never adopts team-a's outbox; one of team-a does.
  a.close();
  const b2 = b.open(URL_, { room: 'team-b', WebSocket: null });
  const a2 = b.open(URL_, { room: 'team-a', WebSocket: null });
  await until(() => a2.get('k') === 'from a', 2000, 'team-a adopts its own outbox');
  assert.equal(b2.get('k'), undefined);
  // With an explicit cacheKey the room is appended too.
  const e = b.open(URL_, { room: 'x', cacheKey: 'mine', WebSocket: null });
  e.set('q', 1);
  await tick();
  assert.ok(Array.from(storage.map.keys()).some((k) => k.startsWith('mine::room::x::outbox::')));
  b.closeAll();
});

test('writes made before an async token arrives are kept and sent as that user\'s', async () => {
  const relay = new FakeRelay({ token: (t) => t.split('.').length === 3 });
  const storage = new MemoryStorage();
  const b = browser({ relay, storage });
  const payload = Buffer.from(JSON.stringify({ sub: 'dora', exp: 9999999999 })).toString('base64url');
  let release;
  const gate = new Promise((r) => (release = r));
  const a = b.open(URL_, { room: 'r', token: () => gate.then(() => 'h.' + payload + '.s') });
  const w = a.set('early', 'before the token');
  assert.equal(a.get('early'), 'before the token');
  await sleep(20);
  assert.equal(relay.urls.length, 0, 'no connect without a token');
  release();
  await w.durable;
  assert.equal(relay.state.get('early'), 'before the token');
  assert.ok(Array.from(storage.map.keys()).some((k) => k.includes('::room::r::user::sub:dora')), 'the scope names the user');
  b.closeAll();
});

test('refresh: a clock far ahead of the relay\'s (exp already past here) refreshes at most once a second', async () => {
  const relay = new FakeRelay({ token: () => true });
  relay.helloExtra = () => ({ user: 'sam', access: 'write', exp: Math.floor(Date.now() / 1000) - 100 });
  let refreshes = 0;
  relay.onAuth = (conn, msg) => {
    if (msg.token === params(conn.sock.url).get('auth_token')) return;
    refreshes++;
    relay._send(conn, { type: 'auth_ok', exp: Math.floor(Date.now() / 1000) - 99, access: 'write' });
  };
  const b = browser({ relay });
  let n = 0;
  const a = b.open(URL_, { token: () => 't' + ++n });
  await until(() => a.connected, 2000, 'connected');
  await sleep(2500);
  assert.ok(refreshes >= 1 && refreshes <= 3, `${refreshes} refreshes in 2.5 s`);
  assert.ok(a.connected);
  b.closeAll();
});

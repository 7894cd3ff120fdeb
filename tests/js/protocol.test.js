'use strict';
// Protocol v2 with fallback to v1, the URL, status after hello, idle connections, reconnect
// with backoff and close codes, resume with a delta.

const assert = require('node:assert/strict');
const { test, FakeRelay, browser, sleep, until } = require('./helpers');

test('v2: ?v=2 is added keeping the query, auth_token goes before the #fragment, the auth frame is sent', async () => {
  const relay = new FakeRelay({ token: 'to ken' });
  const b = browser({ relay });
  const a = b.open('ws://relay.test/ws?room=blue#frag', { authToken: 'to ken' });
  await until(() => a.connected, 2000, 'connected');
  assert.match(relay.urls[0], /^ws:\/\/relay\.test\/ws\?room=blue&v=2&cid=[a-z0-9]{20}&auth_token=to%20ken#frag$/);
  assert.deepEqual(relay.received('auth')[0], { type: 'auth', token: 'to ken' });
  assert.equal(a.protocol, 2);
  assert.equal(a.node, 'alpha');
  b.closeAll();
});

test('v2: writes carry a ref and are acknowledged; v1 (upstream) gets upstream frames, no ref, no resume', async () => {
  const v2 = browser({ relay: new FakeRelay({ version: 2 }) });
  const a = v2.open();
  await until(() => a.connected);
  const w = a.set('k', 1);
  await w.durable;
  assert.match(v2.relay.received('set')[0].ref, /^[a-z0-9]{10}\.\d+$/, 'a write id unique to this client id');
  assert.match(w.stamp, /^\d{20}\.\d{10}\.alpha$/);
  assert.equal(typeof w.seq, 'number');

  const v1 = browser({ relay: new FakeRelay({ version: 1 }) });
  const c = v1.open();
  await until(() => c.connected);
  assert.equal(c.protocol, 1, 'hello without "v":2 means v1');
  const w1 = c.set('k', { a: 1 });
  await w1.durable; // resolved by the echo
  assert.equal(w1.stamp, null);
  const sent = v1.relay.received('set')[0];
  assert.deepEqual(sent, { type: 'set', key: 'k', value: { a: 1 } }, 'exactly upstream\'s frame');
  v1.relay.kill(1001, 'server shutting down');
  await until(() => v1.relay.urls.length === 2 && c.connected, 3000, 'reconnect');
  assert.ok(!/resume=|cid=/.test(v1.relay.urls[1]), v1.relay.urls[1]);
  v2.closeAll();
  v1.closeAll();
});

test('v1: an idle tab sends one ignored frame so upstream does not close it after 5 s', async () => {
  const b = browser({ relay: new FakeRelay({ version: 1 }) });
  const a = b.open();
  await until(() => a.connected);
  await sleep(30);
  assert.deepEqual(b.relay.received(), [{ type: 'auth', token: '' }]);
  b.closeAll();
});

test('v2: an idle tab sends nothing and stays connected (no client-side idle disconnect)', async () => {
  const b = browser({ relay: new FakeRelay({ version: 2 }) });
  const a = b.open();
  await until(() => a.connected);
  await sleep(300);
  assert.equal(a.connected, true);
  assert.deepEqual(b.relay.received(), []);
  assert.equal(b.relay.urls.length, 1);
  b.closeAll();
});

test('onStatus fires after hello: clientId and clientColor are known when connected turns true', async () => {
  const b = browser();
  const a = b.open();
  const seen = [];
  a.onStatus((connected, status) => seen.push({ connected, id: a.clientId, color: a.clientColor, status }));
  assert.equal(seen[0].connected, false, 'called at once with the current state');
  await until(() => seen.some((s) => s.connected), 2000, 'connected');
  const up = seen.find((s) => s.connected);
  assert.ok(up.id && /^hsl\(/.test(up.color), JSON.stringify(up));
  assert.equal(up.status.protocol, 2);
  assert.equal(seen.filter((s) => s.connected).length, 1);
  b.closeAll();
});

test('reconnect: jittered exponential backoff, longer after busy closes', async (t) => {
  const random = t.mock.method(Math, 'random', () => 0.999999);
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  const delays = [];
  const a = b.open('ws://relay.test/ws', { maxReconnectDelayMs: 1000 });
  a.onStatus((connected, s) => {
    if (!connected && s.retryInMs !== null) delays.push(s.retryInMs);
  });
  await until(() => delays.length >= 4, 4000, 'four attempts');
  assert.deepEqual(delays.slice(0, 4), [200, 400, 800, 1000]);
  a.close();

  random.mock.mockImplementation(() => 0);
  const relay2 = new FakeRelay();
  const b2 = browser({ relay: relay2 });
  const c = b2.open('ws://relay.test/ws', { maxReconnectDelayMs: 1000 });
  await until(() => c.connected);
  const statuses = [];
  c.onStatus((connected, s) => statuses.push(s));
  relay2.kill(4503, 'server busy');
  await until(() => statuses.length >= 2);
  const busy = statuses[1];
  assert.equal(busy.code, 4503);
  assert.ok(busy.retryInMs >= 1000 && busy.retryInMs <= 4000, 'busy backoff ' + busy.retryInMs);
  assert.equal(busy.fatal, false);
  c.close();

  const relay3 = new FakeRelay({ version: 1 });
  const b3 = browser({ relay: relay3 });
  const d = b3.open('ws://relay.test/ws', { maxReconnectDelayMs: 1000 });
  await until(() => d.connected);
  const s3 = [];
  d.onStatus((connected, s) => s3.push(s));
  relay3.kill(1013, 'server busy');
  await until(() => s3.length >= 2);
  assert.ok(s3[1].retryInMs >= 1000, 'v1 1013 backs off longer too: ' + s3[1].retryInMs);
  d.close();
  relay3.kill(1000, '');
  const s4 = [];
  const relay4 = new FakeRelay();
  const e = browser({ relay: relay4 }).open('ws://relay.test/ws');
  await until(() => e.connected);
  e.onStatus((connected, s) => s4.push(s));
  relay4.kill(1001, 'server shutting down');
  await until(() => s4.length >= 2);
  assert.equal(s4[1].retryInMs, 100, 'ordinary close: first step, jitter 0 gives half of 200 ms');
  e.close();
  b.closeAll();
});

for (const [version, code, reason] of [
  [2, 4401, 'auth failed'],
  [1, 1008, 'auth failed'],
]) {
  test(`auth failure (v${version}: ${code}) stops reconnecting and is reported`, async () => {
    const relay = new FakeRelay({ version, token: 'right' });
    const b = browser({ relay });
    const a = b.open('ws://relay.test/ws', { authToken: 'wrong' });
    const errors = [];
    const statuses = [];
    a.onError((e) => errors.push(e));
    a.onStatus((connected, s) => statuses.push(s));
    await until(() => errors.length === 1, 2000, 'error');
    assert.equal(errors[0].type, 'auth');
    assert.equal(errors[0].code, code);
    assert.equal(errors[0].reason, reason);
    assert.equal(errors[0].fatal, true);
    const last = statuses[statuses.length - 1];
    assert.equal(last.fatal, true);
    assert.equal(last.retryInMs, null);
    await sleep(600);
    assert.equal(relay.urls.length, 1, 'no second attempt');
    // A new token: reconnect() tries again.
    a.reconnect({ authToken: 'right' });
    await until(() => a.connected, 2000, 'connected with the right token');
    b.closeAll();
  });
}

test('resume: the token advances with every seq; the reconnect gets a delta that is applied on top', async () => {
  const relay = new FakeRelay();
  relay.write('same', 'unchanged');
  relay.write('changes', 1);
  relay.write('goes', 'away');
  const b = browser({ relay });
  const a = b.open();
  await until(() => a.get('goes') === 'away');
  relay.write('other', 'x'); // seq 4, applied live
  await until(() => a.get('other') === 'x');
  const kept = a.get('same');
  relay.kill(1001, 'server shutting down');
  relay.down = true;
  await until(() => !a.connected);
  relay.write('changes', 2);
  relay.write('goes', undefined);
  relay.write('new', { n: 1 });
  const calls = [];
  a.onAny((key, next) => calls.push([key, next]));
  relay.down = false;
  await until(() => a.get('new') !== undefined, 4000, 'delta');
  const url = relay.urls[relay.urls.length - 1];
  assert.ok(url.includes('resume=' + relay.run + '.4'), url);
  const second = Array.from(relay.conns)[0].frames[1];
  assert.equal(second.type, 'delta');
  assert.deepEqual(second.data, { changes: 2, new: { n: 1 } });
  assert.deepEqual(second.deleted, ['goes']);
  assert.equal(a.get('changes'), 2);
  assert.equal(a.has('goes'), false);
  assert.equal(a.get('same'), kept);
  assert.deepEqual(calls.map((c) => c[0]).sort(), ['changes', 'goes', 'new']);
  // The next resume token starts from the delta's.
  relay.write('later', 1);
  await until(() => a.get('later') === 1);
  relay.kill(4504, 'too slow');
  await until(() => relay.urls.length >= 3 && a.connected, 6000, 'second reconnect');
  assert.ok(relay.urls[2].includes('resume=' + relay.run + '.' + relay.seq), relay.urls[2]);
  b.closeAll();
});

test('a relay restart (token of another run) gets a whole snapshot, which replaces the state', async () => {
  const relay = new FakeRelay();
  relay.write('a', 1);
  relay.write('b', 2);
  const b = browser({ relay });
  const a = b.open();
  await until(() => a.get('b') === 2);
  relay.restart();
  relay.state.delete('b'); // say a ledger lost it: the snapshot is the truth
  await until(() => relay.conns.size === 1 && a.connected && !a.has('b'), 4000, 'snapshot after restart');
  assert.equal(Array.from(relay.conns)[0].frames[1].type, 'snapshot');
  assert.equal(a.get('a'), 1);
  b.closeAll();
});

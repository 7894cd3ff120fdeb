'use strict';
// Upstream's nine offline scenarios (test_aether_offline.js, reference §9.1), against our client.

const assert = require('node:assert/strict');
const { test, Aether, MemoryStorage, FakeRelay, browser, sleep, until } = require('./helpers');

const URL1 = 'ws://localhost:8211';
const CACHE1 = 'aether::state::' + URL1;

function pendingFor(promise, ms) {
  return Promise.race([promise.then(() => 'resolved'), sleep(ms).then(() => 'pending')]);
}

test('1. no cache and no server: ready() stays pending and the state is empty', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  const a = b.open(URL1);
  assert.equal(await pendingFor(a.ready(), 50), 'pending');
  assert.deepEqual(a.keys(), []);
  assert.equal(a.connected, false);
  b.closeAll();
});

test('2. the server snapshot populates the state and is cached as {"v":1,"data":…}', async () => {
  const relay = new FakeRelay({ version: 1 });
  relay.write('node:1', { x: 10, y: 20, label: 'router' });
  relay.write('title', 'topology');
  const b = browser({ relay });
  const a = b.open(URL1);
  await a.ready();
  assert.deepEqual(a.get('node:1'), { x: 10, y: 20, label: 'router' });
  await sleep(120);
  const cached = JSON.parse(b.storage.getItem(CACHE1));
  assert.equal(cached.v, 1);
  assert.deepEqual(cached.data, { 'node:1': { x: 10, y: 20, label: 'router' }, title: 'topology' });
  b.closeAll();
});

test('3. a pre-seeded cache makes ready() resolve at once, nested values included', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  b.storage.setItem(CACHE1, JSON.stringify({ v: 1, data: { 'node:a': { coords: { x: 1, y: [2, 3] } }, n: null } }));
  const t0 = Date.now();
  const a = b.open(URL1);
  await a.ready();
  assert.ok(Date.now() - t0 < 20, 'ready took ' + (Date.now() - t0) + ' ms');
  assert.deepEqual(a.get('node:a'), { coords: { x: 1, y: [2, 3] } });
  assert.equal(a.has('n'), true);
  assert.equal(a.get('n'), null);
  b.closeAll();
});

test('4. 22 writes made offline are persisted and survive a new instance', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  const a = b.open(URL1);
  for (let i = 0; i < 22; i++) a.set('drag', { x: 98 + i, y: 5 });
  assert.deepEqual(a.get('drag'), { x: 119, y: 5 });
  await sleep(120);
  assert.deepEqual(JSON.parse(b.storage.getItem(CACHE1)).data.drag, { x: 119, y: 5 });
  const again = b.open(URL1);
  assert.deepEqual(again.get('drag'), { x: 119, y: 5 }, 'not an intermediate value');
  b.closeAll();
});

test('5. a corrupt cache is removed and ready() stays pending', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  b.storage.setItem(CACHE1, '{not json');
  const a = b.open(URL1);
  assert.equal(b.storage.getItem(CACHE1), null);
  assert.equal(await pendingFor(a.ready(), 50), 'pending');
  b.closeAll();
});

test('6. a cache of another format version (v:99) is ignored', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  b.storage.setItem(CACHE1, JSON.stringify({ v: 99, data: { secret: 1 } }));
  const a = b.open(URL1);
  assert.equal(a.has('secret'), false);
  assert.equal(await pendingFor(a.ready(), 30), 'pending');
  b.closeAll();
});

test('7. a 50-byte storage quota never throws and the value stays in memory', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay, storage: new MemoryStorage(50) });
  const a = b.open(URL1);
  assert.doesNotThrow(() => a.set('big', 'x'.repeat(500)));
  await sleep(120);
  assert.equal(a.get('big'), 'x'.repeat(500));
  assert.doesNotThrow(() => a.close());
});

test('8. hot cache, then the server snapshot updates, removes and fires watchers; the cache is rewritten', async () => {
  const relay = new FakeRelay({ version: 1 });
  relay.write('a', 2);
  relay.write('c', 3);
  const b = browser({ relay });
  b.storage.setItem(CACHE1, JSON.stringify({ v: 1, data: { a: 1, b: 'gone soon' } }));
  const a = b.open(URL1);
  assert.equal(a.get('a'), 1);
  const calls = [];
  a.onAny((key, next, prev) => calls.push([key, next, prev]));
  await until(() => a.get('c') === 3, 2000, 'snapshot');
  assert.equal(a.get('a'), 2);
  assert.equal(a.has('b'), false);
  assert.ok(calls.length >= 3, JSON.stringify(calls));
  assert.deepEqual(calls.find((c) => c[0] === 'b'), ['b', undefined, 'gone soon']);
  await sleep(120);
  assert.deepEqual(JSON.parse(b.storage.getItem(CACHE1)).data, { a: 2, c: 3 });
  b.closeAll();
});

test('9. two URLs keep isolated caches', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const storage = new MemoryStorage();
  const one = new Aether('ws://one.test/ws', { WebSocket: relay.WebSocket, storage, BroadcastChannel: null });
  const two = new Aether('ws://two.test/ws', { WebSocket: relay.WebSocket, storage, BroadcastChannel: null });
  one.set('k', 'one');
  two.set('k', 'two');
  await sleep(120);
  assert.equal(JSON.parse(storage.getItem('aether::state::ws://one.test/ws')).data.k, 'one');
  assert.equal(JSON.parse(storage.getItem('aether::state::ws://two.test/ws')).data.k, 'two');
  one.close();
  two.close();
  const again = new Aether('ws://one.test/ws', { WebSocket: relay.WebSocket, storage, BroadcastChannel: null });
  assert.equal(again.get('k'), 'one');
  again.close();
});

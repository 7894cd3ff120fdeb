'use strict';
// Acknowledgements, supersede, null/undefined, the durable outbox, pacing, no flicker.

const assert = require('node:assert/strict');
const { test, Aether, FakeRelay, MemoryStorage, ChannelBus, browser, sleep, until } = require('./helpers');

const URL0 = 'ws://relay.test/ws';
const OUTBOX_PREFIX = 'aether::state::' + URL0 + '::outbox::';

function outboxKeys(storage) {
  return Array.from(storage.map.keys()).filter((k) => k.startsWith(OUTBOX_PREFIX));
}

// ----- acknowledgements -----------------------------------------------------------------------

test('ack API: durable resolves on the ack (v2) with stamp and seq; whenDurable waits for a key', async () => {
  const b = browser();
  const a = b.open();
  const w = a.set('k', { deep: [1, 2] });
  assert.equal(w.status, 'pending');
  assert.equal(a.pendingWrites('k'), 1);
  const all = a.whenDurable();
  const one = a.whenDurable('k');
  const done = await w.durable;
  assert.equal(done, w);
  assert.equal(w.status, 'durable');
  assert.equal(w.stamp, b.relay.received('set').length && Array.from(b.relay.conns)[0].frames.find((f) => f.type === 'ack').stamp);
  await one;
  await all;
  assert.equal(a.pendingWrites(), 0);
  await a.whenDurable('nothing-pending'); // resolves at once
  b.closeAll();
});

test('ack API: a nack rejects durable with the reason and undoes the write locally', async () => {
  const b = browser();
  const a = b.open(URL0, { maxValueBytes: 0 }); // let the relay judge the size
  await until(() => a.connected);
  await a.set('doc', 'v1').durable;
  const seen = [];
  a.on('doc', (next) => seen.push(next));
  const w = a.set('doc', 'x'.repeat(40000));
  assert.equal(a.get('doc').length, 40000, 'optimistic');
  await assert.rejects(w.durable, (err) => err instanceof Aether.AetherWriteError && err.reason === 'bad_value' && err.key === 'doc');
  assert.equal(w.status, 'failed');
  assert.equal(a.get('doc'), 'v1', 'undone');
  assert.deepEqual(seen.map((v) => (v.length > 10 ? 'big' : v)), ['big', 'v1']);
  await assert.rejects(a.set('x', 1n).durable, /not_json/);
  await assert.rejects(a.set('', 1).durable, /bad_key/);
  await assert.rejects(a.set('k'.repeat(257), 1).durable, /bad_key/);
  assert.equal(a.has(''), false);
  b.closeAll();
});

test('ack API: an ignored failure is never an unhandled rejection; close() rejects pending ones with "closed"', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const b = browser({ relay });
  const a = b.open();
  a.set('x', 1n); // failed, never awaited
  const pending = a.set('k', 1);
  const p = pending.durable;
  a.close();
  await assert.rejects(p, (err) => err.reason === 'closed');
  await assert.rejects(a.whenDurable('k'), /closed/);
  await sleep(20);
});

test('v1: durable resolves on the echo', async () => {
  const b = browser({ relay: new FakeRelay({ version: 1 }) });
  const a = b.open();
  const w = a.set('k', null);
  await w.durable;
  assert.equal(w.status, 'durable');
  b.closeAll();
});

// ----- null and undefined ---------------------------------------------------------------------

test('set(key, undefined) deletes; null is a value: stored, synced, persisted', async () => {
  const b = browser();
  const a = b.open();
  const c = b.open();
  await until(() => a.connected && c.connected);
  await a.set('n', null).durable;
  assert.equal(a.has('n'), true);
  assert.equal(a.get('n'), null);
  assert.deepEqual(a.snapshot(), { n: null });
  await until(() => c.has('n'));
  assert.equal(c.get('n'), null);
  assert.equal(b.relay.state.get('n'), null);
  await sleep(100);
  assert.deepEqual(JSON.parse(b.storage.getItem('aether::state::' + URL0)).data, { n: null });
  const fresh = new Aether(URL0, { WebSocket: null, storage: b.storage, BroadcastChannel: null });
  assert.equal(fresh.has('n'), true);
  assert.equal(fresh.get('n'), null);
  fresh.close();

  const del = a.set('n', undefined);
  assert.equal(del.op, 'delete');
  assert.equal(a.has('n'), false);
  await del.durable;
  assert.deepEqual(b.relay.received('delete')[0].key, 'n');
  assert.equal(b.relay.state.has('n'), false);
  await until(() => !c.has('n'));
  b.closeAll();
});

// ----- supersede ------------------------------------------------------------------------------

async function race(version, order) {
  // A and B write the same key; the relay applies them in `order` (indices into [A's, B's]).
  const b = browser({ relay: new FakeRelay({ version }) });
  const A = b.open();
  const B = b.open();
  await until(() => A.connected && B.connected);
  const fired = { A: [], B: [] };
  A.onSupersede((...args) => fired.A.push(args));
  B.onSupersede((...args) => fired.B.push(args));
  b.relay.holdEchoes = true;
  const wa = A.set('k', 'from A');
  const wb = B.set('k', 'from B');
  await until(() => b.relay.heldOps.length === 2);
  b.relay.releaseEchoes(order);
  await Promise.all([wa.durable, wb.durable]);
  await sleep(30);
  const final = b.relay.state.get('k');
  assert.equal(A.get('k'), final);
  assert.equal(B.get('k'), final);
  b.closeAll();
  return { fired, final };
}

test('supersede (v2): fires for the writer whose write lost, never for the winner (both orders)', async () => {
  // Relay order A then B: B's write is later and wins; A lost.
  let r = await race(2, [0, 1]);
  assert.equal(r.final, 'from B');
  assert.deepEqual(r.fired.A, [['k', 'from A', 'from B']]);
  assert.deepEqual(r.fired.B, []);
  // Relay order B then A: A won (upstream reported a false positive here and missed the loss).
  r = await race(2, [1, 0]);
  assert.equal(r.final, 'from A');
  assert.deepEqual(r.fired.A, []);
  assert.deepEqual(r.fired.B, [['k', 'from B', 'from A']]);
});

test('supersede (v1): stamps are missing, so it never fires (no false positives)', async () => {
  for (const order of [[0, 1], [1, 0]]) {
    const r = await race(1, order);
    assert.deepEqual(r.fired, { A: [], B: [] });
  }
});

test('supersede (v2): own later writes, deletes and other keys do not fire; a later delete by another does', async () => {
  const b = browser();
  const A = b.open();
  await until(() => A.connected);
  const fired = [];
  A.onSupersede((...args) => fired.push(args));
  await A.set('k', 1).durable;
  await A.set('k', 2).durable; // our own later write
  b.relay.write('other', 1);
  await sleep(20);
  assert.deepEqual(fired, []);
  b.relay.write('k', undefined); // someone else deletes it
  await until(() => fired.length === 1);
  assert.deepEqual(fired[0], ['k', 2, undefined]);
  b.relay.write('k', 3); // already reported once
  await sleep(20);
  assert.equal(fired.length, 1);
  b.closeAll();
});

test('supersede (v2): a loss that happened while offline is found in the resume delta or the snapshot', async () => {
  const relay = new FakeRelay();
  const b = browser({ relay });
  const A = b.open();
  await until(() => A.connected);
  const fired = [];
  A.onSupersede((...args) => fired.push(args));
  await A.set('lost', 'mine').durable;
  await A.set('kept', 'mine').durable;
  await A.set('same', 'mine').durable;
  relay.down = true;
  relay.kill(1001, 'server shutting down');
  await until(() => !A.connected);
  relay.write('lost', 'theirs');
  relay.down = false;
  await until(() => A.connected && A.get('lost') === 'theirs', 4000, 'delta');
  assert.equal(Array.from(relay.conns)[0].frames[1].type, 'delta');
  assert.deepEqual(fired, [['lost', 'mine', 'theirs']]);

  // A restart: no delta, the whole snapshot; a changed value is a loss, an equal one is not.
  relay.restart();
  relay.write('kept', 'theirs');
  relay.write('same', 'mine'); // someone wrote our value again: not reported (cannot tell)
  await until(() => A.connected && A.get('kept') === 'theirs', 4000, 'snapshot');
  assert.deepEqual(fired, [['lost', 'mine', 'theirs'], ['kept', 'mine', 'theirs']]);
  b.closeAll();
});

// ----- the outbox -----------------------------------------------------------------------------

test('outbox: offline writes are persisted, survive a reload and are sent on reconnect', async () => {
  const relay = new FakeRelay();
  relay.down = true;
  const storage = new MemoryStorage();
  const page1 = browser({ relay, storage });
  const a = page1.open();
  for (let i = 0; i < 50; i++) a.set('drag', { x: i }); // coalesced: one pending write
  a.set('note', 'hello');
  a.delete('tmp');
  await sleep(5);
  const keys = outboxKeys(storage);
  assert.equal(keys.length, 1);
  const rec = JSON.parse(storage.getItem(keys[0]));
  assert.deepEqual(rec.entries.map((e) => [e.op, e.key, e.value]), [
    ['set', 'drag', { x: 49 }],
    ['set', 'note', 'hello'],
    ['delete', 'tmp', undefined],
  ]);
  a.close(); // the page goes away (a reload)
  assert.equal(JSON.parse(storage.getItem(keys[0])).released, true);

  relay.down = false;
  const page2 = browser({ relay, storage });
  const b = page2.open();
  assert.deepEqual(b.get('drag'), { x: 49 }, 'shown at once');
  await b.whenDurable();
  assert.deepEqual(relay.received().filter((m) => m.type !== 'auth').map((m) => [m.type, m.key]), [
    ['set', 'drag'],
    ['set', 'note'],
    ['delete', 'tmp'],
  ]);
  assert.deepEqual(relay.state.get('drag'), { x: 49 });
  await sleep(5);
  assert.deepEqual(outboxKeys(storage), [], 'nothing left once acknowledged');
  page2.closeAll();
});

test('outbox: a crashed tab\'s writes are adopted after its owner does not answer; a live owner keeps them', async () => {
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const offline = new FakeRelay();
  offline.down = true;
  const alive = browser({ relay: offline, storage, bus }).open(); // a live tab, offline, with a pending write
  alive.set('mine', 1);
  await sleep(5);
  const aliveKey = outboxKeys(storage)[0];
  // A tab that died without closing (no 'released' mark, a fresh heartbeat).
  const entries = [{ op: 'set', key: 'orphan', value: 1, t: Date.now() }];
  storage.setItem(OUTBOX_PREFIX + 'dead-tab', JSON.stringify({ v: 1, owner: 'dead-tab', released: false, beat: Date.now(), entries }));
  const t0 = Date.now();
  const b = browser({ relay, storage, bus }).open();
  await until(() => relay.state.get('orphan') === 1, 3000, 'orphan adopted and sent');
  assert.ok(Date.now() - t0 >= 250, 'waited for the probe');
  assert.equal(storage.getItem(OUTBOX_PREFIX + 'dead-tab'), null);
  await sleep(400);
  assert.notEqual(storage.getItem(aliveKey), null, 'the live tab answered: its outbox is its own');
  assert.equal(b.pendingWrites('mine'), 0);
  alive.close();
  b.close();
});

test('outbox: reconnect pacing stays under the relay limit (burst 200, 100/s, first message free)', async () => {
  const relay = new FakeRelay({ burst: 200, rate: 100 });
  relay.down = true;
  const b = browser({ relay });
  const a = b.open();
  const N = 260;
  for (let i = 0; i < N; i++) a.set('item:' + i, i);
  relay.down = false;
  const t0 = Date.now();
  await until(() => a.connected, 3000, 'connected');
  await a.whenDurable();
  const elapsed = Date.now() - t0;
  assert.deepEqual(relay.closes, [], 'never closed for rate');
  assert.equal(relay.received('set').length, N);
  assert.equal(relay.state.size, N);
  // 100 at once, the other 160 at 50/s: about 3.2 s.
  assert.ok(elapsed >= 2500, 'paced: ' + elapsed + ' ms');
  b.closeAll();
});

test('outbox: without pacing (as upstream) the same flush trips the rate limit', async () => {
  const relay = new FakeRelay({ burst: 200, rate: 100 });
  relay.down = true;
  const b = browser({ relay });
  const a = b.open(URL0, { sendRatePerSecond: 0, sendBurst: 1000 });
  for (let i = 0; i < 260; i++) a.set('item:' + i, i);
  relay.down = false;
  await until(() => relay.closes.length > 0, 3000, 'rate-limit close');
  assert.equal(relay.closes[0].code, 4429);
  b.closeAll();
});

test('no flicker: the stale snapshot on reconnect never hides pending local writes', async () => {
  for (const version of [2, 1]) {
    const relay = new FakeRelay({ version });
    relay.write('title', 'old');
    relay.write('gone', 'still on the relay');
    const b = browser({ relay });
    const a = b.open();
    await until(() => a.get('title') === 'old');
    relay.down = true;
    relay.kill(1001, 'server shutting down');
    await until(() => !a.connected);
    const seen = [];
    a.on('title', (v) => seen.push(v));
    a.on('gone', (v) => seen.push(['gone', v]));
    a.set('title', 'new');
    a.delete('gone');
    relay.down = false;
    await until(() => a.connected, 3000, 'reconnected');
    await a.whenDurable();
    await sleep(20);
    assert.deepEqual(seen, ['new', ['gone', undefined]], `v${version}: ${JSON.stringify(seen)}`);
    assert.equal(relay.state.get('title'), 'new');
    b.closeAll();
  }
});

'use strict';
// Same-origin tabs over BroadcastChannel: stale re-posts are never applied after newer values;
// sibling writes show at once and settle without flicker.

const assert = require('node:assert/strict');
const { test, FakeRelay, ChannelBus, MemoryStorage, browser, sleep, until } = require('./helpers');

test('a connected tab never applies a re-post that arrives after a newer frame', async () => {
  const b = browser();
  const A = b.open();
  const B = b.open();
  await until(() => A.connected && B.connected);
  const seen = [];
  B.on('k', (v) => seen.push(v));
  b.bus.hold();
  b.relay.write('k', 1);
  b.relay.write('k', 2);
  await until(() => A.get('k') === 2 && B.get('k') === 2);
  b.bus.release(); // A's re-posts of 1 then 2, late
  await sleep(20);
  assert.equal(B.get('k'), 2);
  assert.deepEqual(seen, [1, 2]);
  b.closeAll();
});

for (const version of [2, 1]) {
  test(`a tab without a connection ignores an older re-post after a newer one (v${version})`, async () => {
    const relay = new FakeRelay({ version });
    const bus = new ChannelBus();
    const storage = new MemoryStorage();
    const A = browser({ relay, bus, storage }).open();
    const B = browser({ relay, bus, storage }).open();
    await until(() => A.connected && B.connected);
    const C = browser({ relay, bus, storage }).open('ws://relay.test/ws', { WebSocket: null }); // never connects
    await sleep(20);
    const seen = [];
    C.on('k', (v) => seen.push(v));
    bus.hold();
    relay.write('k', 1);
    relay.write('k', 2);
    await until(() => A.get('k') === 2 && B.get('k') === 2);
    // Deliver to C: A's 1, A's 2, then B's 1 (stale) and B's 2.
    bus.release((held) => {
      const toC = held.filter((h) => h.to === C._bc && (h.data.type === 'set'));
      const rest = held.filter((h) => !toC.includes(h));
      const fromA = toC.filter((h) => h.data.from === A._tabId);
      const fromB = toC.filter((h) => h.data.from === B._tabId);
      return rest.concat(fromA, fromB);
    });
    await sleep(30);
    assert.equal(C.get('k'), 2);
    assert.deepEqual(seen, [1, 2], JSON.stringify(seen));
    if (version === 2) {
      const repost = bus.log.find((m) => m.data.type === 'set' && !m.data.local);
      assert.equal(typeof repost.data.seq, 'number');
      assert.match(repost.data.stamp, /^\d{20}\./);
    }
    A.close();
    B.close();
    C.close();
  });
}

test('a sibling\'s write shows at once in other tabs and stays until its echo (no flicker)', async () => {
  const b = browser();
  const A = b.open();
  const B = b.open();
  await until(() => A.connected && B.connected);
  await A.set('title', 'old').durable;
  await until(() => B.get('title') === 'old');
  const seen = [];
  B.on('title', (v) => seen.push(v));
  b.relay.holdEchoes = true;
  A.set('title', 'new');
  await until(() => B.get('title') === 'new', 1000, 'optimistic sibling write');
  b.relay.write('title', 'older'); // applied before A's, echoed to B first
  await sleep(20);
  assert.equal(B.get('title'), 'new', 'A\'s pending write stays on top');
  b.relay.releaseEchoes();
  await until(() => A.pendingWrites() === 0);
  await sleep(20);
  assert.equal(B.get('title'), 'new');
  assert.deepEqual(seen, ['new']);
  b.closeAll();
});

test('a sibling\'s refused write is undone in the other tabs', async () => {
  const b = browser();
  const A = b.open('ws://relay.test/ws', { maxValueBytes: 0 });
  const B = b.open();
  await until(() => A.connected && B.connected);
  await A.set('doc', 'ok').durable;
  await until(() => B.get('doc') === 'ok');
  const seen = [];
  B.on('doc', (v) => seen.push(v.length > 10 ? 'big' : v));
  const w = A.set('doc', 'x'.repeat(40000));
  await assert.rejects(w.durable, /bad_value/);
  await until(() => seen.length === 2, 1000, 'shown, then undone in B');
  assert.deepEqual(seen, ['big', 'ok']);
  assert.equal(B.get('doc'), 'ok');
  b.closeAll();
});

test('presence from a sibling is not doubled (the relay delivers it; the channel copy is ignored)', async () => {
  const b = browser();
  const A = b.open();
  const B = b.open();
  await until(() => A.connected && B.connected);
  const got = [];
  B.onPresence((id, x, y, color) => got.push({ id, x, y, color }));
  A.sendPresence(12.7, -3);
  await until(() => got.length === 1);
  await sleep(30);
  assert.equal(got.length, 1);
  assert.deepEqual([got[0].id, got[0].x, got[0].y], [A.clientId, 12, -3]);
  const leaves = [];
  B.onPresenceLeave((id) => leaves.push(id));
  const id = A.clientId;
  A.close();
  await until(() => leaves.length === 1);
  assert.deepEqual(leaves, [id]);
  b.closeAll();
});

test('a new tab with no cache and no connection gets its state from a sibling', async () => {
  const relay = new FakeRelay();
  relay.write('k', 'v');
  const bus = new ChannelBus();
  const A = browser({ relay, bus }).open();
  await until(() => A.get('k') === 'v');
  const C = browser({ relay, bus }).open('ws://relay.test/ws', { WebSocket: null });
  await C.ready();
  assert.equal(C.get('k'), 'v');
  A.close();
  C.close();
});

test('a sibling\'s write that reaches a tab after newer relay frames is not shown (v2 seq guard)', async () => {
  const b = browser();
  const A = b.open();
  const B = b.open();
  await until(() => A.connected && B.connected);
  await A.set('k', 'start').durable;
  await until(() => B.get('k') === 'start');
  const seen = [];
  B.on('k', (v) => seen.push(v));
  b.bus.hold(); // A's channel messages are late
  await A.set('k', 'a').durable;
  b.relay.write('k', 'z');
  await until(() => B.get('k') === 'z');
  b.bus.release();
  await sleep(30);
  assert.equal(B.get('k'), 'z');
  assert.deepEqual(seen, ['a', 'z']);
  b.closeAll();
});

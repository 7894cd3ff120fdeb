'use strict';
// Issue 17 conditions that need no browser: backoff on connections that close right after hello,
// the cache never overwritten by a staler tab, bounded per-key bookkeeping, one socket per scope
// (the leader tab's) and a follower taking over from a leader that stopped answering.
// The browser-level proofs are in conditions.test.js.

const assert = require('node:assert/strict');
const { test, FakeRelay, MemoryStorage, ChannelBus, browser, sleep, until } = require('./helpers');

test('a relay that closes right after hello is retried ever more slowly (item 7)', async (t) => {
  t.mock.method(Math, 'random', () => 0.999999);
  const relay = new FakeRelay();
  relay.closeAfterHello = true;
  const b = browser({ relay });
  const delays = [];
  const a = b.open('ws://relay.test/ws', { maxReconnectDelayMs: 1600 });
  a.onStatus((connected, s) => {
    if (!connected && s.retryInMs !== null) delays.push(s.retryInMs);
  });
  await until(() => delays.length >= 5, 8000, 'five attempts');
  assert.deepEqual(delays.slice(0, 5), [200, 400, 800, 1600, 1600], 'hello did not reset the backoff');
  // A connection that lasted resets it (10 s), and reconnect() does at once.
  a.close();
  const c = browser({ relay: new FakeRelay() }).open();
  assert.equal(c._opts.maxReconnectDelayMs, 30000, 'the default cap');
  c.close();
});

test('the state cache is never overwritten by a tab that is behind (item 8)', async () => {
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const A = browser({ relay, storage, bus }).open();
  await until(() => A.connected);
  relay.write('k', 1);
  relay.write('k', 2);
  await until(() => A.get('k') === 2);
  await sleep(120);
  const key = 'aether::state::ws://relay.test/ws';
  assert.equal(JSON.parse(storage.getItem(key)).data.k, 2);
  assert.deepEqual(JSON.parse(storage.getItem(key + '::version')), { run: relay.run, seq: 2 });
  // A tab of the same run at seq 1 (stale) does not overwrite it.
  A._seq = 1;
  A._state.set('k', 1);
  A._saveCache();
  assert.equal(JSON.parse(storage.getItem(key)).data.k, 2);
  A.close();
});

test('per-key bookkeeping stays bounded while keys come and go (item 8)', async () => {
  const relay = new FakeRelay({ burst: 100000, rate: 100000 });
  const b = browser({ relay });
  const A = b.open();
  await until(() => A.connected);
  for (let i = 0; i < 3000; i++) {
    relay.write('tmp:' + i, i);
    relay.write('tmp:' + i, undefined);
  }
  await until(() => A._seq === relay.seq, 5000, 'all applied');
  assert.equal(A.keys().length, 0);
  assert.ok(A._keySeq.size <= 1024 + 1, 'keySeq ' + A._keySeq.size);
  assert.ok(A._keyStamp.size <= 1024 + 1, 'keyStamp ' + A._keyStamp.size);
  b.closeAll();
});

/**
 * A minimal Web Locks: exclusive, FIFO, released when the callback's promise settles; `signal`
 * aborts a waiting request; `steal` takes a held lock at once (the holder's request rejects).
 */
function fakeLocks() {
  const held = new Map();
  return {
    request(name, opts, cb) {
      if (typeof opts === 'function') [cb, opts] = [opts, {}];
      return new Promise((resolve, reject) => {
        const q = held.get(name) || { holder: null, waiters: [] };
        held.set(name, q);
        const run = () => {
          const grant = { reject };
          q.holder = grant;
          Promise.resolve(cb({ name })).then(resolve, reject).finally(() => {
            if (q.holder !== grant) return; // stolen: released already
            q.holder = null;
            const next = q.waiters.shift();
            if (next) next();
          });
        };
        if (opts.steal) {
          if (q.holder) q.holder.reject(new Error('AbortError: stolen'));
          run();
          return;
        }
        if (opts.signal) opts.signal.addEventListener('abort', () => {
          const i = q.waiters.indexOf(run);
          if (i >= 0) q.waiters.splice(i, 1);
          reject(new Error('AbortError'));
        });
        if (!q.holder) run();
        else if (opts.ifAvailable) Promise.resolve(cb(null)).then(resolve, reject);
        else q.waiters.push(run);
      });
    },
  };
}

test('three tabs with Web Locks share one socket: the leader carries every tab\'s writes and frames (item 8)', async () => {
  const locks = fakeLocks();
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const tabs = [0, 1, 2].map(() => browser({ relay, storage, bus }).open('ws://relay.test/ws', { locks }));
  await until(() => tabs.every((t) => t.connected), 5000, 'all connected');
  assert.deepEqual(tabs.map((t) => t._leader), [true, false, false]);
  assert.equal(relay.conns.size, 1, 'one socket for three tabs');
  // Every tab writes; every write is acknowledged and every tab sees all of them.
  await Promise.all(tabs.map((t, i) => t.set('k' + i, i).durable));
  await until(() => tabs.every((t) => [0, 1, 2].every((i) => t.get('k' + i) === i)), 5000, 'all writes everywhere');
  assert.ok(tabs.every((t) => t.pendingWrites() === 0));
  // A relay frame reaches the followers in one message from the leader.
  bus.log.length = 0;
  relay.write('k', 1);
  await until(() => tabs.every((t) => t.get('k') === 1), 5000, 'relay write everywhere');
  await sleep(20);
  const downs = bus.log.filter((m) => m.data.type === 'down');
  assert.deepEqual(downs.map((m) => m.data.from), [tabs[0]._tabId], 'one re-post, not one per tab');
  // Writes a follower makes while the leader goes are sent again through the next leader.
  relay.holdEchoes = true;
  const pending = tabs[2].set('during', 'handover');
  await sleep(20);
  tabs[0].close();
  relay.holdEchoes = false;
  relay.heldOps.length = 0; // the relay never answered them on the old socket
  await until(() => tabs[1]._leader && tabs[1].connected && tabs[2].connected, 5000, 'new leader');
  await pending.durable;
  assert.equal(relay.conns.size, 1, 'still one socket');
  await until(() => tabs[1].get('during') === 'handover', 5000, 'the new leader has it');
  tabs[1].close();
  tabs[2].close();
});

test('tabs sharing one socket send their cursors with their tab id; a closing tab\'s cursor leaves at the relay and in its siblings (item 8)', async () => {
  const locks = fakeLocks();
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const tabs = [0, 1, 2].map(() => browser({ relay, storage, bus }).open('ws://relay.test/ws', { locks }));
  await until(() => tabs.every((t) => t.connected), 5000, 'all connected');
  const shown = tabs.map(() => new Map());
  const left = tabs.map(() => []);
  tabs.forEach((t, i) => {
    t.onPresence((id, x, y) => shown[i].set(id, x + ',' + y));
    t.onPresenceLeave((id) => {
      shown[i].delete(id);
      left[i].push(id);
    });
  });
  tabs.forEach((t, i) => t.sendPresence(i, 1));
  const cursors = () => relay.inbound.filter((m) => m.msg.type === 'presence');
  await until(() => cursors().length === 3, 2000, 'three cursors at the relay');
  assert.equal(new Set(cursors().map((m) => m.conn)).size, 1, 'on one socket');
  assert.deepEqual(cursors().map((m) => m.msg.tab).sort(), tabs.map((t) => t._tabId).sort(), 'each with its tab id');
  const conn = tabs[0].clientId;
  const id = (t) => conn + ':' + t._tabId;
  // Each tab shows its siblings' cursors (the relay never sends them back to this socket).
  await until(() => tabs.every((t, i) => shown[i].size === 2 && !shown[i].has(id(t))), 2000, 'siblings shown');
  assert.equal(shown[0].get(id(tabs[2])), '2,1');
  // A follower closes: a presence-leave with its tab goes up through the leader; siblings drop it.
  tabs[2].close();
  await until(() => relay.inbound.some((m) => m.msg.type === 'presence-leave' && m.msg.tab === tabs[2]._tabId), 2000, 'leave at the relay');
  await until(() => shown[0].size === 1 && shown[1].size === 1, 2000, 'gone in the siblings');
  assert.deepEqual(left[0], [id(tabs[2])]);
  // The leader closes: the follower leads, and its cursor goes out again on the new socket.
  const before = cursors().length;
  tabs[0].close();
  await until(() => tabs[1]._leader && tabs[1].connected && !tabs[1]._connection.linked, 5000, 'new leader');
  await until(() => cursors().length === before + 1, 2000, 'its cursor again');
  const again = cursors()[before];
  assert.deepEqual([again.msg.tab, again.msg.x, again.conn.id], [tabs[1]._tabId, 1, tabs[1].clientId]);
  assert.equal(shown[1].size, 0, 'no sibling left to show');
  tabs[1].close();
});

test('a tab that vanishes without a word (its lock found free) has its cursor taken away by a sibling (item 8)', async () => {
  const locks = fakeLocks();
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const tabs = [0, 1, 2].map(() => browser({ relay, storage, bus }).open('ws://relay.test/ws', { locks }));
  await until(() => tabs.every((t) => t.connected), 5000, 'all connected');
  const shown = new Map();
  tabs[0].onPresence((id, x, y) => shown.set(id, x + ',' + y));
  tabs[0].onPresenceLeave((id) => shown.delete(id));
  tabs[2].sendPresence(3, 4);
  const crashed = tabs[2].cursorId;
  assert.equal(crashed, tabs[0].clientId + ':' + tabs[2]._tabId);
  await until(() => shown.get(crashed) === '3,4', 2000, 'shown');
  // The tab dies: no pagehide, no presence-leave; only its locks go (as the browser frees them).
  tabs[2]._closed = true;
  tabs[2]._tabs._hooks = { message() {}, locked() {}, gone() {}, leading() {}, deposed() {}, leaderSeen() {}, open: () => false };
  tabs[2]._tabs.close();
  await until(() => relay.inbound.some((m) => m.msg.type === 'presence-leave' && m.msg.tab === tabs[2]._tabId), 2000, 'the leave, sent by a sibling');
  await until(() => !shown.has(crashed), 2000, 'gone here too');
  tabs[0].close();
  tabs[1].close();
});

test('a leader that stops answering loses the lock to a follower and follows it; its write is sent once (item 8)', async () => {
  const locks = fakeLocks();
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const tabs = [0, 1].map(() => browser({ relay, storage, bus }).open('ws://relay.test/ws', { locks }));
  await until(() => tabs.every((t) => t.connected), 5000, 'connected');
  const [a, b] = tabs;
  assert.deepEqual([a._leader, b._leader], [true, false]);
  // A's write reaches the relay, which never answers it on A's socket.
  relay.holdEchoes = true;
  a.set('k', 'from-a');
  await until(() => relay.heldOps.length === 1, 2000, 'held');
  relay.heldOps.length = 0;
  relay.holdEchoes = false;
  // B stops hearing A (as when A is frozen) and takes the lock.
  b._tabs._steal();
  await until(() => b._leader && b.connected && !b._connection.linked, 5000, 'b leads with its own socket');
  // A learns it lost the lead, closes its socket, links to B and sends its write again.
  await until(() => !a._leader && a.connected && a._connection.linked && a.pendingWrites() === 0, 5000, 'a follows');
  await until(() => relay.conns.size === 1, 2000, 'one socket');
  assert.equal(relay.state.get('k'), 'from-a');
  assert.equal(b.get('k'), 'from-a');
  // A stale beat (an older term) is ignored; a newer term makes a leader step down.
  const term = b._tabs.term;
  b._tabs._onBeat({ type: 'beat', term: term - 1, from: 'ghost', open: true });
  assert.equal(b._leader, true);
  b._tabs._onBeat({ type: 'beat', term: term + 1, from: a._tabId, open: false });
  await until(() => !b._leader && b._tabs.term === term + 1, 2000, 'b stepped down');
  await until(() => tabs.filter((t) => t._leader).length === 1 && tabs.every((t) => t.connected), 5000, 'one leader again');
  await until(() => relay.conns.size === 1, 2000, 'one socket');
  a.close();
  b.close();
});

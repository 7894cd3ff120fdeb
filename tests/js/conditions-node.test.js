'use strict';
// Issue 17 conditions that need no browser: backoff on connections that close right after hello,
// the cache never overwritten by a staler tab, bounded per-key bookkeeping, one tab re-posting.
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

test('with a leader, only the leader re-posts relay frames to the other tabs (item 8)', async () => {
  // A minimal Web Locks: exclusive, FIFO, released when the callback's promise settles.
  const held = new Map();
  const locks = {
    request(name, opts, cb) {
      if (typeof opts === 'function') [cb, opts] = [opts, {}];
      return new Promise((resolve, reject) => {
        const q = held.get(name) || { busy: false, waiters: [] };
        held.set(name, q);
        const run = () => {
          q.busy = true;
          Promise.resolve(cb({ name })).then(resolve, reject).finally(() => {
            q.busy = false;
            const next = q.waiters.shift();
            if (next) next();
          });
        };
        if (opts.signal) opts.signal.addEventListener('abort', () => {
          const i = q.waiters.indexOf(run);
          if (i >= 0) q.waiters.splice(i, 1);
          reject(new Error('AbortError'));
        });
        if (!q.busy) run();
        else if (opts.ifAvailable) Promise.resolve(cb(null)).then(resolve, reject);
        else q.waiters.push(run);
      });
    },
  };
  const relay = new FakeRelay();
  const storage = new MemoryStorage();
  const bus = new ChannelBus();
  const tabs = [0, 1, 2].map(() => browser({ relay, storage, bus }).open('ws://relay.test/ws', { locks }));
  await until(() => tabs.every((t) => t.connected));
  await sleep(20);
  assert.deepEqual(tabs.map((t) => t._leader), [true, false, false]);
  bus.log.length = 0;
  relay.write('k', 1);
  await until(() => tabs.every((t) => t.get('k') === 1));
  await sleep(20);
  const reposts = bus.log.filter((m) => m.data.type === 'set' && !m.data.local);
  assert.deepEqual(reposts.map((m) => m.data.from), [tabs[0]._tabId], 'one re-post, not one per tab');
  // The leader goes: the next tab leads.
  tabs[0].close();
  await until(() => tabs[1]._leader, 1000, 'new leader');
  tabs[1].close();
  tabs[2].close();
});

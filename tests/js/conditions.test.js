'use strict';
// The client under real conditions (issue 17), in headless Chromium against the real relay: a
// write retried after its socket died between apply and ack, full localStorage, tabs closed and
// frozen with writes pending, accounts and relays switched, a socket that looks open but is dead.
// Pages come from a small static server (so they reload while the relay is down) and talk to the
// relay with ?relay=. Two pages "in the same browser" share a browser context (storage, channel,
// locks); pages of different users get their own contexts.
// AETHER_JS=<file> serves another client build (to show a test catches the bug it is about).
// Needs AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH); skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, aetherBin, browserSkip, staticServer, sleep } = require('./helpers');
const { PageHandle, openPage, startRelay, stopRelay, launchChromium, closeChromium } = require('./devtools');

const BIN = aetherBin();
const skip = browserSkip(BIN);
const STATIC = path.join(__dirname, '..', '..', 'static');
const PAGE = path.join(__dirname, 'fixtures', 'conditions', 'page.html');

class Page extends PageHandle {}

/** Opens another page in the browser context of `page` (same storage, channel and locks). */
async function sibling(page, url, name) {
  const { cdp } = page;
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId: page.browserContextId });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  const errors = [];
  cdp.listeners.push((msg) => {
    if (msg.sessionId === sessionId && msg.method === 'Runtime.exceptionThrown') errors.push(msg.params.exceptionDetails.text);
  });
  await cdp.send('Runtime.enable', {}, sessionId);
  await cdp.send('Page.enable', {}, sessionId);
  const p = new Page(cdp, name, { sessionId, browserContextId: page.browserContextId, targetId, errors });
  if (url) await p.goto(url);
  return p;
}

/** Closes a page as a user closing the tab does (pagehide and unload run). */
async function closeTab(page) {
  await page.cdp.send('Target.closeTarget', { targetId: page.targetId });
}

/** The ledger's records (set/del) for `key`, in order. */
function ledgerRecords(ledger, key) {
  if (!fs.existsSync(ledger)) return [];
  return fs.readFileSync(ledger, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)).filter((r) => r.key === key);
}

/** A relay, a static site with page.html and `aether.js` (from `source`), and a Chromium. */
async function world(t, source = process.env.AETHER_JS || path.join(STATIC, 'aether.js')) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-conditions-'));
  const site = path.join(dir, 'site');
  fs.mkdirSync(site);
  fs.copyFileSync(source, path.join(site, 'aether.js'));
  fs.copyFileSync(PAGE, path.join(site, 'page.html'));
  const ledger = path.join(dir, 'ledger.jsonl');
  const w = { dir, ledger, relay: null, server: null, chromium: null };
  t.after(async () => {
    closeChromium(w.chromium);
    await stopRelay(w.relay);
    if (w.server) await w.server.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  w.relay = await startRelay(dir, 0, ledger);
  w.port = w.relay.port;
  w.server = await staticServer(site);
  w.chromium = await launchChromium(dir);
  w.url = (query = '') => `${w.server.url}/page.html?relay=${encodeURIComponent(`ws://127.0.0.1:${w.port}/ws`)}${query}`;
  w.open = async (name, query) => Page.open(w.chromium.cdp, w.url(query), name);
  w.stop = async () => {
    await stopRelay(w.relay);
    w.relay = null;
  };
  w.start = async () => {
    w.relay = await startRelay(dir, w.port, ledger);
  };
  return w;
}

test('a write whose socket died between apply and ack is not applied again over a later write (item 1)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const b = await w.open('b');
  await a.wait('aether.connected', 10000, 'a connected');
  await b.wait('aether.connected', 10000, 'b connected');
  // A's socket goes deaf: the relay applies its write, A never hears the echo or the ack.
  await a.eval('window.lost = []; aether.onSupersede((k, mine, theirs) => lost.push([k, mine, theirs])); true');
  await a.eval('deafen(); aether.set("k", "mine"); true');
  await b.wait('aether.get("k") === "mine"', 10000, 'the relay applied A\'s write');
  // Meanwhile B writes the same key, durably.
  await b.eval('aether.set("k", "theirs").durable.then(() => true)');
  // A's socket drops; A reconnects and sends its unacknowledged write again.
  await a.eval('dropSockets(); true');
  await a.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'A\'s write settled');
  await sleep(300);
  assert.equal(await a.eval('aether.get("k")'), 'theirs');
  assert.equal(await b.eval('aether.get("k")'), 'theirs');
  assert.deepEqual(ledgerRecords(w.ledger, 'k').map((r) => r.value), ['mine', 'theirs'], 'A\'s write applied once, B\'s survived');
  assert.deepEqual(await a.eval('lost'), [['k', 'mine', 'theirs']], 'A is told its write lost');
  assert.deepEqual(a.errors.concat(b.errors), []);
});

test('a write retried by the reloaded page, or by the sibling that adopts it, is applied once (item 1)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const other = await w.open('other');
  await a.wait('aether.connected', 10000, 'a connected');
  await other.wait('aether.connected', 10000, 'other connected');
  // Reload: applied, never acknowledged, then the page reloads; the new page sends it again.
  await a.eval('deafen(); aether.set("r", "mine"); true');
  await other.wait('aether.get("r") === "mine"', 10000, 'applied');
  await other.eval('aether.set("r", "theirs").durable.then(() => true)');
  await a.reload({ ignoreCache: true });
  await a.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'the reloaded page settled the write');
  await sleep(300);
  assert.equal(await a.eval('aether.get("r")'), 'theirs');
  assert.deepEqual(ledgerRecords(w.ledger, 'r').map((r) => r.value), ['mine', 'theirs']);
  // Adoption: applied, never acknowledged, the tab closes; its sibling sends it again.
  const b = await sibling(a, w.url(), 'b');
  await b.wait('aether.connected', 10000, 'b connected');
  await a.eval('deafen(); aether.set("s", "mine"); true');
  await other.wait('aether.get("s") === "mine"', 10000, 'applied');
  await other.eval('aether.set("s", "theirs").durable.then(() => true)');
  await closeTab(a);
  await b.wait('aether.get("s") === "theirs" && aether.pendingWrites() === 0', 15000, 'b settled the adopted write');
  await sleep(300);
  assert.equal(await b.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).length'), 0, 'a\'s outbox was taken');
  assert.deepEqual(ledgerRecords(w.ledger, 's').map((r) => r.value), ['mine', 'theirs']);
});

test('a socket that looks open but hears nothing is replaced; its pending write then settles (item 6)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a', '&ackTimeoutMs=1500&pingTimeoutMs=1000&pingIntervalMs=3000');
  await a.wait('aether.connected', 10000, 'connected');
  // Idle and deaf: the ping goes unanswered, so the client reconnects by itself.
  await a.eval('window.statuses = []; aether.onStatus((c, s) => statuses.push(c ? "up" : s.code)); deafen(); true');
  await a.wait('statuses.join() === "up,4000,up"', 10000, 'reconnected after an unanswered ping');
  // Deaf with a write in flight: the overdue ack sends a ping, no pong, reconnect, write settles.
  await a.eval('deafen(); aether.set("k", 1); true');
  await a.wait('aether.pendingWrites() === 0', 10000, 'settled on the new socket');
  assert.deepEqual(ledgerRecords(w.ledger, 'k').map((r) => r.value), [1]);
  // The page hears the network come back: a live socket answers the ping and stays.
  await a.eval('statuses.length = 0; dispatchEvent(new Event("online")); true');
  await sleep(1500);
  assert.deepEqual(await a.eval('statuses'), []);
});

test('full localStorage never brings back an older pending write after a reload (item 2)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  await a.wait('aether.connected', 10000, 'connected');
  // A state cache of some size, then offline.
  await a.eval('Promise.all(Array.from({length: 40}, (_, i) => aether.set("doc:" + i, "y".repeat(2000)).durable)).then(() => true)');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('aether.set("K", 1); true');
  await sleep(200);
  // The ordering that loses data: storage fills up, then K changes to a value that no longer fits.
  await a.eval('fillStorage(0)');
  await a.eval('aether.set("K", {v: 2, pad: "z".repeat(20000)}); true');
  await sleep(200);
  assert.equal(await a.eval('aether.get("K").v'), 2);
  // The cache went first, so the newer outbox fits; K=1 is nowhere in storage.
  const stored = await a.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).map((k) => JSON.parse(localStorage.getItem(k)).entries.map((e) => e.value && (e.value.v || e.value)))');
  assert.deepEqual(stored, [[2]]);
  assert.ok((await a.eval('errors')).includes('storage:quota'), 'the app was told');
  await a.reload({ ignoreCache: true });
  assert.equal(await a.eval('JSON.stringify(aether.get("K") && aether.get("K").v)'), '2', 'the reloaded page shows K=2, not K=1');
  await w.start();
  await a.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'sent');
  const records = ledgerRecords(w.ledger, 'K').map((r) => (typeof r.value === 'object' ? r.value.v : r.value));
  assert.deepEqual(records, [2], 'K=1 was never sent');
});

test('with storage too full even for the outbox, no stale outbox stays behind (item 2)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  await a.wait('aether.connected', 10000, 'connected');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('aether.set("K", 1); true');
  await sleep(200);
  await a.eval('fillStorage(0)');
  await a.eval('aether.set("K", "z".repeat(30000)); true');
  await sleep(200);
  const outboxes = await a.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).map((k) => localStorage.getItem(k).slice(0, 300))');
  assert.deepEqual(outboxes, [], 'the stored outbox (K=1) was removed rather than left stale');
  assert.ok((await a.eval('errors')).includes('storage:quota'));
  await a.reload({ ignoreCache: true });
  assert.equal(await a.eval('aether.get("K")'), undefined, 'K=1 does not come back');
  await a.eval('Object.keys(localStorage).filter((k) => k.startsWith("filler:")).forEach((k) => localStorage.removeItem(k)); true');
  await w.start();
  await a.wait('aether.connected', 15000, 'reconnected');
  await sleep(300);
  assert.deepEqual(ledgerRecords(w.ledger, 'K'), [], 'K=1 was never sent');
});

test('a tab closed with pending writes hands them to the open sibling at once, pagehide writes too (item 3)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a', '&writeOnPagehide=late');
  const b = await sibling(a, w.url(), 'b');
  await a.wait('aether.connected', 10000, 'a connected');
  await b.wait('aether.connected', 10000, 'b connected');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('aether.set("from-a", "offline"); true');
  await b.wait('aether.get("from-a") === "offline"', 5000, 'b shows a\'s write');
  await closeTab(a);
  await b.wait('aether.pendingWrites() === 2', 5000, 'b adopted both writes');
  await w.start();
  await b.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'sent by b');
  assert.deepEqual(ledgerRecords(w.ledger, 'from-a').map((r) => r.value), ['offline']);
  assert.deepEqual(ledgerRecords(w.ledger, 'late').map((r) => r.value), ['written during pagehide']);
  const left = await b.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).length');
  assert.equal(left, 0);
});

test('with storage full, a closing tab hands its in-memory writes to the sibling in its bye (items 2, 3)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const b = await sibling(a, w.url(), 'b');
  await a.wait('aether.connected', 10000, 'a connected');
  await b.wait('aether.connected', 10000, 'b connected');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('fillStorage(0)');
  await a.eval('aether.set("big", "z".repeat(30000)); true');
  await sleep(200);
  assert.equal(await a.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).length'), 0, 'nothing stored');
  assert.ok((await a.eval('errors')).includes('storage:quota'));
  await closeTab(a);
  await b.wait('aether.pendingWrites() === 1', 5000, 'b took the write from the bye message');
  await b.eval('Object.keys(localStorage).filter((k) => k.startsWith("filler:")).forEach((k) => localStorage.removeItem(k)); true');
  await w.start();
  await b.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'sent by b');
  assert.equal(ledgerRecords(w.ledger, 'big').length, 1);
});

test('a live tab busy in a long task keeps its outbox: a new tab waits for its lock, not a 300 ms probe (item 4)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  await a.wait('aether.connected', 10000, 'a connected');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('aether.set("mine", 1); true');
  await sleep(200);
  // A long task (or a frozen tab, or one in the back-forward cache): A cannot answer a probe.
  await a.eval('setTimeout(() => { const end = Date.now() + 2500; while (Date.now() < end); }, 0); true');
  const c = await sibling(a, w.url(), 'c');
  await sleep(2600);
  assert.equal(await a.eval('aether.pendingWrites()'), 1);
  assert.equal(await c.eval('aether.pendingWrites()'), 0, 'c did not take a live tab\'s writes');
  const owner = await c.eval('Object.keys(localStorage).filter((k) => k.includes("::outbox::")).map((k) => JSON.parse(localStorage.getItem(k)).entries.length)');
  assert.deepEqual(owner, [1], 'a\'s outbox is still a\'s');
  await closeTab(a);
  await c.wait('aether.pendingWrites() === 1', 5000, 'c took them once a was gone');
  await w.start();
  await c.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'sent');
  assert.deepEqual(ledgerRecords(w.ledger, 'mine').map((r) => r.value), [1]);
});

/** An unsigned JWT naming `sub` (the relay here has no auth; the client only reads `sub`). */
function jwt(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return b64({ alg: 'none' }) + '.' + b64({ sub }) + '.sig';
}

test('another user\'s pending writes are never sent with your token; another relay\'s cache is not yours (item 5)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('alice', '&token=' + jwt('alice'));
  await a.wait('aether.connected', 10000, 'connected');
  await a.eval('aether.set("shared", "alice-online").durable.then(() => true)');
  await w.stop();
  await a.wait('!aether.connected', 10000, 'offline');
  await a.eval('aether.set("note", "alice-offline"); true');
  // Bob signs in on the same page (same storage): none of Alice's state or writes.
  await a.eval(`aether.reconnect({authToken: ${JSON.stringify(jwt('bob'))}}); true`);
  assert.equal(await a.eval('aether.get("note")'), undefined);
  assert.equal(await a.eval('aether.pendingWrites()'), 0);
  await w.start();
  await a.wait('aether.connected && aether.get("shared") === "alice-online"', 15000, 'bob connected');
  await sleep(300);
  assert.deepEqual(ledgerRecords(w.ledger, 'note'), [], 'Alice\'s offline write was not sent as Bob');
  // A reload as Alice sends her write.
  await a.goto(w.url('&token=' + jwt('alice')));
  await a.wait('aether.connected && aether.pendingWrites() === 0', 15000, 'alice again');
  assert.deepEqual(ledgerRecords(w.ledger, 'note').map((r) => r.value), ['alice-offline']);

  // Another relay: its page starts empty, and nothing of this relay's is sent there.
  const dir2 = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-conditions-2-'));
  const ledger2 = path.join(dir2, 'ledger.jsonl');
  const other = await startRelay(dir2, 0, ledger2);
  t.after(async () => {
    await stopRelay(other);
    fs.rmSync(dir2, { recursive: true, force: true });
  });
  await w.stop();
  await a.goto(w.url('&token=' + jwt('alice')));
  await a.eval('aether.set("pending", "for the first relay"); true');
  await sleep(100);
  const url2 = `${w.server.url}/page.html?relay=${encodeURIComponent(`ws://127.0.0.1:${other.port}/ws`)}&token=${jwt('alice')}`;
  await a.goto(url2);
  await a.wait('aether.connected', 10000, 'on the other relay');
  await sleep(300);
  assert.equal(await a.eval('aether.get("shared")'), undefined, 'no cache of the first relay');
  assert.deepEqual(ledgerRecords(ledger2, 'pending'), []);
});

test('three tabs of one browser: one re-posts relay frames and one writes the cache (item 8)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const b = await sibling(a, w.url(), 'b');
  const c = await sibling(a, w.url(), 'c');
  const tabs = [a, b, c];
  for (const p of tabs) await p.wait('aether.connected', 10000, 'connected');
  await sleep(300);
  for (const p of tabs) await p.eval('posted.length = 0; storageWrites = {}; true');
  await a.eval('Promise.all(Array.from({length: 20}, (_, i) => aether.set("n" + i, i).durable)).then(() => true)');
  for (const p of tabs) await p.wait('aether.get("n19") === 19', 5000, 'all tabs have the writes');
  await sleep(300);
  const reposts = [];
  const cacheWriters = [];
  for (const p of tabs) {
    const posted = await p.eval('posted');
    reposts.push(posted.filter((x) => x === 'set').length);
    const writes = await p.eval('Object.entries(storageWrites).filter(([k]) => /::state::[^:]*:\\/\\/[^:]*:\\d+\\/ws$/.test(k)).length');
    cacheWriters.push(writes);
  }
  assert.deepEqual(reposts.slice().sort(), [0, 0, 20], 'one tab re-posts each relay frame once: ' + reposts);
  assert.deepEqual(cacheWriters.slice().sort(), [0, 0, 1], 'one tab writes the cache: ' + cacheWriters);
  // The leader closes: another tab takes over both jobs.
  const leader = tabs[reposts.indexOf(20)];
  const rest = tabs.filter((p) => p !== leader);
  await closeTab(leader);
  await sleep(300);
  for (const p of rest) await p.eval('posted.length = 0; true');
  await rest[0].eval('aether.set("after", 1).durable.then(() => true)');
  await rest[1].wait('aether.get("after") === 1', 5000, 'synced');
  await sleep(300);
  const after = [];
  for (const p of rest) after.push((await p.eval('posted')).filter((x) => x === 'set').length);
  assert.deepEqual(after.slice().sort(), [0, 1], 'the new leader re-posts: ' + after);
});

test('soak: three tabs (two sharing a browser) write through dropped, deaf and restarted connections, and all end equal to the relay', { skip, timeout: 120000 }, async (t) => {
  const { Aether, MemoryStorage, loadWs, until } = require('./helpers');
  const w = await world(t);
  const a = await w.open('a', '&ackTimeoutMs=1500&pingTimeoutMs=1000&pingIntervalMs=3000');
  const b = await sibling(a, w.url('&ackTimeoutMs=1500&pingTimeoutMs=1000&pingIntervalMs=3000'), 'b');
  const c = await w.open('c', '&ackTimeoutMs=1500&pingTimeoutMs=1000&pingIntervalMs=3000');
  const pages = [a, b, c];
  for (const p of pages) await p.wait('aether.connected', 10000, 'connected');
  // Each page writes on its own timer; the test disturbs the connections meanwhile.
  for (const [i, p] of pages.entries()) {
    await p.eval(`(() => {
      let n = 0;
      window.writer = setInterval(() => {
        if (n >= 40) {
          window.writesDone = true;
          return clearInterval(writer);
        }
        n++;
        const key = 'k' + Math.floor(Math.random() * 5);
        if (Math.random() < 0.15) aether.delete(key); else aether.set(key, { by: ${i}, n });
      }, 25);
      return true;
    })()`);
  }
  await sleep(300);
  await a.eval('dropSockets(); true');
  await c.eval('deafen(); true');
  await sleep(300);
  await w.stop();
  await sleep(400);
  await w.start();
  await sleep(300);
  await b.eval('dropSockets(); true');
  for (const p of pages) await p.wait('window.writesDone && aether.connected && aether.pendingWrites() === 0', 30000, 'settled');
  await sleep(500);
  const node = new Aether(`ws://127.0.0.1:${w.port}/ws`, { WebSocket: loadWs(), storage: new MemoryStorage(), BroadcastChannel: null });
  t.after(() => node.close());
  await until(() => node.isReady && node.connected, 10000, 'node client');
  await sleep(300);
  // Converged: every page shows exactly the relay's state (a page may still be reconnecting
  // after the last drop, so this is waited for, within a bound).
  let last = null;
  const deadline = Date.now() + 15000;
  for (;;) {
    const canon = (o) => JSON.stringify(Object.entries(o).sort((x, y) => (x[0] < y[0] ? -1 : 1)));
    const truth = canon(node.snapshot());
    const seen = [];
    for (const p of pages) {
      const snap = await p.eval('aether.connected && aether.pendingWrites() === 0 ? aether.snapshot() : null');
      seen.push(snap && canon(snap));
    }
    last = { truth, seen };
    if (seen.every((x) => x === truth)) break;
    if (Date.now() > deadline) assert.fail('pages did not converge on the relay: ' + JSON.stringify(last));
    await sleep(200);
  }
  assert.deepEqual(a.errors.concat(b.errors, c.errors), []);
});

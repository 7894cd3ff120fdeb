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
  // The reloaded page takes its stored outbox back once the old page's lock is released: wait.
  await a.wait('aether.get("K") !== undefined', 10000, 'the reloaded page took its pending write back');
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

/** The relay's connected clients, from /healthz. */
async function relayClients(w) {
  const res = await fetch(`http://127.0.0.1:${w.port}/healthz`);
  return (await res.json()).clients;
}

/** Waits until the relay counts `n` clients (bounded). */
async function untilClients(w, n, ms, what) {
  const deadline = Date.now() + ms;
  let got;
  while ((got = await relayClients(w)) !== n) {
    if (Date.now() > deadline) assert.fail(`${what}: the relay has ${got} clients, not ${n}`);
    await sleep(100);
  }
}

/** Every page shows exactly the relay's state (read by a page of its own), within a bound. */
async function untilEqual(pages, truthPage, ms) {
  const canon = 'JSON.stringify(Object.entries(aether.snapshot()).sort((x, y) => (x[0] < y[0] ? -1 : 1)))';
  const deadline = Date.now() + ms;
  for (;;) {
    const truth = await truthPage.eval(canon);
    const seen = [];
    for (const p of pages) seen.push(await p.eval(`aether.connected && aether.pendingWrites() === 0 ? ${canon} : null`));
    if (seen.every((x) => x === truth)) return truth;
    if (Date.now() > deadline) assert.fail('pages did not converge on the relay: ' + JSON.stringify({ truth, seen }));
    await sleep(200);
  }
}

test('three tabs of one browser share one socket: the leader carries every write, cursor and ack (item 8)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const b = await sibling(a, w.url(), 'b');
  const c = await sibling(a, w.url(), 'c');
  const other = await w.open('other'); // another browser: its own socket
  const tabs = [a, b, c];
  for (const p of tabs.concat(other)) await p.wait('aether.connected', 10000, 'connected');
  await untilClients(w, 2, 5000, 'one socket for the three tabs, one for the other browser');
  const open = [];
  for (const p of tabs) open.push(await p.eval('socketStates().filter((s) => s === "1").length'));
  assert.deepEqual(open.slice().sort(), [0, 0, 1], 'one tab holds the only open WebSocket: ' + open);
  const leaders = [];
  for (const p of tabs) leaders.push(await p.eval('aether._leader'));
  assert.deepEqual(leaders.map((x) => (x ? 1 : 0)).sort(), [0, 0, 1]);
  const leader = tabs[leaders.indexOf(true)];
  for (const p of tabs) await p.eval('window.cursors = {}; aether.onPresence((id, x, y) => (cursors[id] = x + "," + y)); posted.length = 0; storageWrites = {}; true');
  await other.eval('window.cursors = {}; aether.onPresence((id, x, y) => (cursors[id] = x + "," + y)); true');
  // Every tab writes, durably (its acks come through the leader); every tab sees every write.
  await Promise.all(tabs.map((p, i) => p.eval(`Promise.all(Array.from({length: 10}, (_, j) => aether.set("t${i}-" + j, j).durable)).then(() => true)`)));
  await other.eval('aether.set("from-other", 1).durable.then(() => true)');
  for (const p of tabs) await p.wait('aether.get("from-other") === 1 && aether.get("t0-9") === 9 && aether.get("t1-9") === 9 && aether.get("t2-9") === 9', 5000, 'every write');
  // Cursors: the other browser's reaches every tab; a follower's reaches the other browser.
  await other.eval('aether.sendPresence(5, 7); true');
  for (const p of tabs) await p.wait('Object.values(cursors).includes("5,7")', 5000, 'the other browser\'s cursor');
  const follower = tabs.find((p) => p !== leader);
  await follower.eval('aether.sendPresence(9, 11); true');
  await other.wait('Object.values(cursors).includes("9,11")', 5000, 'a follower\'s cursor');
  await sleep(300);
  // One message per relay frame on the channel (the leader's), one tab writing the cache.
  const downs = [];
  const cacheWriters = [];
  for (const p of tabs) {
    downs.push((await p.eval('posted')).filter((x) => x === 'down').length);
    cacheWriters.push(await p.eval('Object.entries(storageWrites).filter(([k]) => /::state::[^:]*:\\/\\/[^:]*:\\d+\\/ws$/.test(k)).length'));
  }
  assert.equal(downs.filter((n) => n > 0).length, 1, 'only the leader re-posts: ' + downs);
  assert.ok(downs[tabs.indexOf(leader)] >= 31, 'the leader re-posted every frame: ' + downs);
  assert.deepEqual(cacheWriters.slice().sort(), [0, 0, 1], 'one tab writes the cache: ' + cacheWriters);
  await untilEqual(tabs, other, 10000);

  // The leader closes with a write of its own in flight; a follower writes during the hand-over.
  const rest = tabs.filter((p) => p !== leader);
  await leader.eval('aether.set("leader-last", "sent"); true');
  const closedAt = Date.now();
  await closeTab(leader);
  await rest[0].eval('aether.set("during", "hand-over"); true');
  // A follower leads, with a socket of its own, within the bound.
  const deadline = Date.now() + 8000;
  for (;;) {
    let owns = 0;
    for (const p of rest) if (await p.eval('aether._leader && aether.connected && !aether._connection.linked')) owns++;
    if (owns === 1) break;
    if (Date.now() > deadline) assert.fail('no follower took the socket');
    await sleep(20);
  }
  const movedIn = Date.now() - closedAt;
  await untilAsyncBoth(rest, 'aether.connected', 8000, 'both connected');
  await untilClients(w, 2, 8000, 'again one socket for the tabs');
  await rest[1].eval('aether.set("after", 1).durable.then(() => true)');
  for (const p of rest) await p.wait('aether.get("after") === 1 && aether.get("during") === "hand-over" && aether.get("leader-last") === "sent"', 10000, 'synced');
  await untilEqual(rest, other, 10000);
  assert.deepEqual(ledgerRecords(w.ledger, 'leader-last').map((r) => r.value), ['sent'], 'the closed leader\'s write, once');
  assert.deepEqual(ledgerRecords(w.ledger, 'during').map((r) => r.value), ['hand-over'], 'the follower\'s write, once');
  assert.ok(movedIn < 8000, 'moved in ' + movedIn + ' ms');
  t.diagnostic(`socket moved to a follower ${movedIn} ms after the leader closed`);
  assert.deepEqual(rest.flatMap((p) => p.errors).concat(other.errors), []);
});

/** Waits until `expression` holds in every page. */
async function untilAsyncBoth(pages, expression, ms, what) {
  for (const p of pages) await p.wait(expression, ms, what);
}

/** Records the cursors a page shows (id -> "x,y"), leaves included. */
const WATCH_CURSORS = 'window.cursors = {}; aether.onPresence((id, x, y) => (cursors[id] = x + "," + y)); aether.onPresenceLeave((id) => delete cursors[id]); true';

/** Waits until `page` shows exactly `expected` (id -> "x,y"). */
async function untilCursors(page, expected, ms, what) {
  const want = JSON.stringify(Object.entries(expected).sort());
  const deadline = Date.now() + ms;
  let got;
  while ((got = JSON.stringify(Object.entries(await page.eval('cursors')).sort())) !== want) {
    if (Date.now() > deadline) assert.fail(`${what} (${page.name}): shows ${got}, not ${want}`);
    await sleep(50);
  }
}

test('tabs sharing one socket are cursors of their own: to each other, and to another browser, each leaving when its tab closes (item 8)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const tabs = [a];
  for (const name of ['b', 'c', 'd']) tabs.push(await sibling(a, w.url(), name));
  const other = await w.open('other'); // another browser
  for (const p of tabs.concat(other)) await p.wait('aether.connected', 10000, 'connected');
  await untilClients(w, 2, 5000, 'one socket for the four tabs, one for the other browser');
  for (const p of tabs.concat(other)) await p.eval(WATCH_CURSORS);
  const tabIds = [];
  for (const p of tabs) tabIds.push(await p.eval('aether._tabId'));
  // Every tab moves; each is its own cursor `<connection>:<tab>` everywhere but in itself.
  let otherSeen = {}; // the other browser's cursor, once it moved
  const expectAll = async (pages, ids, conn, what) => {
    const all = {};
    pages.forEach((p, i) => (all[conn + ':' + ids[i]] = `${10 + tabs.indexOf(p)},20`));
    await untilCursors(other, all, 5000, what + ': the other browser sees every tab');
    for (const [i, p] of pages.entries()) {
      const mine = Object.assign({}, all, otherSeen);
      delete mine[conn + ':' + ids[i]];
      await untilCursors(p, mine, 5000, what + ': a tab sees its siblings');
    }
  };
  for (const [i, p] of tabs.entries()) await p.eval(`aether.sendPresence(${10 + i}, 20); true`);
  let conn = await tabs[0].eval('aether.clientId');
  for (const p of tabs) assert.equal(await p.eval('aether.clientId'), conn, 'one connection id for the tabs');
  await expectAll(tabs, tabIds, conn, 'four tabs');
  // The other browser's cursor reaches every tab.
  await other.eval('aether.sendPresence(5, 7); true');
  otherSeen = { [await other.eval('aether.clientId + ":" + aether._tabId')]: '5,7' }; // a tab of its browser too
  await expectAll(tabs, tabIds, conn, 'the other browser moved');

  // A follower tab closes: its cursor leaves in the other browser and in its siblings.
  const leaderIndex = (await Promise.all(tabs.map((p) => p.eval('aether._leader')))).indexOf(true);
  const followerIndex = leaderIndex === 0 ? 1 : 0;
  await closeTab(tabs[followerIndex]);
  let rest = tabs.filter((_, i) => i !== followerIndex);
  let restIds = tabIds.filter((_, i) => i !== followerIndex);
  await expectAll(rest, restIds, conn, 'a follower closed');

  // The leader closes while the others write: a follower leads with a new socket, every write
  // reaches the relay once, and the remaining tabs' cursors come back under the new connection.
  const leader = tabs[leaderIndex];
  await leader.eval('aether.set("leader-last", "sent"); true');
  const closedAt = Date.now();
  await closeTab(leader);
  const restIdx = rest.indexOf(leader);
  rest = rest.filter((p) => p !== leader);
  restIds = restIds.filter((_, i) => i !== restIdx);
  await Promise.all(rest.map((p, i) => p.eval(`aether.set("during-${i}", ${i}); true`)));
  // (Until their links drop, the followers are still "connected" through the closed leader.)
  await untilAsyncBoth(rest, `aether.connected && aether.clientId !== ${JSON.stringify(conn)}`, 10000, 'connected again');
  await untilClients(w, 2, 8000, 'again one socket for the tabs');
  conn = await rest[0].eval('aether.clientId');
  for (const p of rest) assert.equal(await p.eval('aether.clientId'), conn, 'one connection again');
  await expectAll(rest, restIds, conn, 'the leader closed');
  t.diagnostic(`the remaining tabs' cursors were back everywhere ${Date.now() - closedAt} ms after the leader closed`);
  for (const p of rest) await p.wait('aether.pendingWrites() === 0', 10000, 'writes settled');
  assert.deepEqual(ledgerRecords(w.ledger, 'leader-last').map((r) => r.value), ['sent'], 'the closed leader\'s write, once');
  for (const i of rest.keys()) assert.deepEqual(ledgerRecords(w.ledger, `during-${i}`).map((r) => r.value), [i], 'a write made during the hand-over, once');
  await untilEqual(rest, other, 10000);
  assert.deepEqual(rest.flatMap((p) => p.errors).concat(other.errors), []);
});

test('two rooms in one browser keep one socket each, their tabs sharing it (item 8)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a', '&room=one');
  const b = await sibling(a, w.url('&room=one'), 'b');
  const c = await sibling(a, w.url('&room=two'), 'c');
  const d = await sibling(a, w.url('&room=two'), 'd');
  const pages = [a, b, c, d];
  for (const p of pages) await p.wait('aether.connected', 10000, 'connected');
  await untilClients(w, 2, 5000, 'one socket per room');
  const leads = await Promise.all(pages.map((p) => p.eval('aether._leader')));
  assert.deepEqual([leads[0] !== leads[1], leads[2] !== leads[3]], [true, true], 'one leader per room: ' + leads);
  await b.eval('aether.set("k", "one").durable.then(() => true)');
  await d.eval('aether.set("k", "two").durable.then(() => true)');
  for (const [p, v] of [[a, 'one'], [b, 'one'], [c, 'two'], [d, 'two']]) await p.wait(`aether.get("k") === "${v}"`, 5000, 'its room\'s value');
  assert.deepEqual(ledgerRecords(w.ledger, 'k').map((r) => [r.room || null, r.value]).sort(), [['one', 'one'], ['two', 'two']]);
  assert.deepEqual(pages.flatMap((p) => p.errors), []);
});

test('a leader blocked in a long task loses the lead; its pending write reaches the relay once (item 8)', { skip, timeout: 90000 }, async (t) => {
  const w = await world(t);
  const a = await w.open('a');
  const b = await sibling(a, w.url(), 'b');
  for (const p of [a, b]) await p.wait('aether.connected', 10000, 'connected');
  await untilClients(w, 1, 5000, 'one socket');
  const leader = (await a.eval('aether._leader')) ? a : b;
  const follower = leader === a ? b : a;
  // The leader's socket goes deaf (the relay applies its write; the ack never arrives), then its
  // page is stuck in a long task for 8 s.
  await leader.eval('deafen(); aether.set("blocked", "from-the-leader"); setTimeout(() => { const end = Date.now() + 8000; while (Date.now() < end); }, 50); true');
  const blockedAt = Date.now();
  await sleep(200);
  // The follower keeps running and takes over within the bound; the tabs now have two sockets.
  await follower.wait('aether._leader && aether.connected && !aether._connection.linked', 7500, 'the follower leads');
  const tookOver = Date.now() - blockedAt;
  assert.ok(tookOver < 7800, 'took over while the leader was still blocked: ' + tookOver + ' ms');
  await follower.eval('aether.set("meanwhile", 1).durable.then(() => true)');
  // The old leader runs again: it notices it lost the lead, closes its socket and follows.
  await leader.wait('!aether._leader && aether.connected && aether._connection.linked && aether.pendingWrites() === 0', 15000, 'the old leader follows');
  await untilClients(w, 1, 8000, 'one socket again');
  await follower.wait('aether.get("blocked") === "from-the-leader"', 5000, 'the write arrived');
  await leader.wait('aether.get("meanwhile") === 1', 5000, 'the old leader sees the new leader\'s write');
  assert.deepEqual(ledgerRecords(w.ledger, 'blocked').map((r) => r.value), ['from-the-leader'], 'applied exactly once');
  t.diagnostic(`a follower took the lead ${tookOver} ms after the leader blocked`);
  assert.deepEqual(a.errors.concat(b.errors), []);
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

'use strict';
// Rooms and tokens (issue 12) in headless Chromium against the real relay: two rooms side by side
// stay apart (values and presence); a read-only tab cannot change anything (its write is rolled
// back, nobody else ever sees it); a token that expires every few seconds is refreshed by the
// page's token function without a visible disconnect while the page keeps writing; the demos
// honour `?room=`. JWTs are HS256, minted here with node:crypto. Needs AETHER_BIN and Chromium.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { test, Aether, MemoryStorage, until, sleep, aetherBin, browserSkip, loadWs } = require('./helpers');
const { PageHandle, startRelay, stopRelay, launchChromium, closeChromium } = require('./devtools');

const BIN = aetherBin();
const WS = loadWs();
const skip = browserSkip(BIN);
const SECRET = 'rooms-test-secret-' + crypto.randomBytes(8).toString('hex');

/** An HS256 JWT (header.payload.signature, base64url) over `claims`. */
function jwt(claims, secret = SECRET) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + crypto.createHmac('sha256', secret).update(head).digest('base64url');
}
const nowS = () => Math.floor(Date.now() / 1000);

/**
 * A page of the relay's origin running a bare client (no demo): `window.aether` made by `make`
 * (an expression over `Aether` and the page's `relay` URL), with everything it reports recorded
 * in `window.log`: statuses, errors, presence, changes.
 */
class ClientPage extends PageHandle {
  static async start(cdp, base, name, make) {
    const page = await this.open(cdp, null, name);
    await page.cdp.send('Page.navigate', { url: base + '/demos/demo.css' }, page.session);
    await page.wait('document.readyState === "complete"', 15000, 'blank page of the relay');
    await page.eval(`(async () => {
      const { default: Aether } = await import('/aether.mjs');
      const relay = 'ws://' + location.host + '/ws';
      window.log = { status: [], errors: [], presence: [], changes: [] };
      window.aether = ${make};
      aether.onStatus((c, s) => log.status.push(c ? 'up' : 'down:' + s.code));
      aether.onError((e) => log.errors.push(e.type + ':' + e.code + ':' + e.reason));
      aether.onPresence((id, x, y, color, user) => log.presence.push({ id, x, y, user }));
      aether.onAny((key, value) => log.changes.push([key, value === undefined ? null : value]));
      return true;
    })()`);
    return page;
  }
  waitConnected() {
    return this.wait('aether.connected && aether.isReady', 15000, 'connected');
  }
}

function withChromium(name, relayExtra, fn) {
  test(name, { skip, timeout: 120000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-rooms-'));
    let relay = null;
    let chromium = null;
    try {
      relay = await startRelay(dir, 0, path.join(dir, 'ledger.jsonl'), undefined, relayExtra);
      chromium = await launchChromium(dir);
      await fn({ cdp: chromium.cdp, port: relay.port, base: `http://127.0.0.1:${relay.port}` });
    } finally {
      closeChromium(chromium);
      await stopRelay(relay);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}

/** A Node client (the `ws` package) in `room`; resolves once it has the room's state. */
async function nodeClient(port, opts) {
  const c = new Aether(`ws://127.0.0.1:${port}/ws`, Object.assign({ WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null }, opts));
  await until(() => c.connected && c.isReady, 10000, 'node client in ' + (opts.room || 'the default room'));
  return c;
}

withChromium('two rooms side by side stay apart: values, deletes and presence', '', async ({ cdp, port, base }) => {
  const [a1, a2, b1, b2, d1] = await Promise.all([
    ClientPage.start(cdp, base, 'team-a 1', `new Aether(relay, { room: 'team-a' })`),
    ClientPage.start(cdp, base, 'team-a 2', `new Aether(relay, { room: 'team-a' })`),
    ClientPage.start(cdp, base, 'team-b 1', `new Aether(relay, { room: 'team-b' })`),
    ClientPage.start(cdp, base, 'team-b 2', `new Aether(relay, { room: 'team-b' })`),
    ClientPage.start(cdp, base, 'default', `new Aether(relay)`),
  ]);
  for (const p of [a1, a2, b1, b2, d1]) await p.waitConnected();
  assert.equal(await a1.eval('aether.room'), 'team-a');
  assert.equal(await d1.eval('aether.room'), null);

  // The same key in each room, written at the same moment.
  await Promise.all([a1.eval(`aether.set('title', 'A board').durable.then(() => true)`), b1.eval(`aether.set('title', 'B board').durable.then(() => true)`)]);
  await d1.eval(`aether.set('title', 'default board').durable.then(() => true)`);
  await a2.wait(`aether.get('title') === 'A board'`, 5000, 'team-a sibling sees A');
  await b2.wait(`aether.get('title') === 'B board'`, 5000, 'team-b sibling sees B');
  await a1.eval(`aether.set('only-a', 1).durable.then(() => aether.delete('title').durable).then(() => true)`);
  await a2.wait(`aether.get('only-a') === 1 && !aether.has('title')`, 5000, 'team-a: key and delete');

  // Presence: team-a's cursor reaches team-a only.
  await a1.eval('aether.sendPresence(11, 22), true');
  await a2.wait('log.presence.some((p) => p.x === 11 && p.y === 22)', 5000, 'team-a cursor');
  await b1.eval('aether.sendPresence(33, 44), true');
  await b2.wait('log.presence.some((p) => p.x === 33 && p.y === 44)', 5000, 'team-b cursor');
  await sleep(300);
  for (const p of [b1, b2, d1]) assert.equal(await p.eval('log.presence.some((p) => p.x === 11)'), false, p.name + ' never sees team-a\'s cursor');
  for (const p of [a1, a2, d1]) assert.equal(await p.eval('log.presence.some((p) => p.x === 33)'), false, p.name + ' never sees team-b\'s cursor');

  // Nothing of one room ever reached another (the change logs, not just the final state).
  const seen = async (p) => (await p.eval('log.changes')).map(([k, v]) => k + '=' + JSON.stringify(v));
  for (const p of [b1, b2]) assert.deepEqual((await seen(p)).filter((c) => !c.startsWith('title="B board"')), [], p.name);
  assert.deepEqual((await seen(d1)).filter((c) => c !== 'title="default board"'), [], 'default room');
  assert.equal(await b2.eval(`JSON.stringify(aether.snapshot())`), JSON.stringify({ title: 'B board' }));
  assert.equal(await d1.eval(`JSON.stringify(aether.snapshot())`), JSON.stringify({ title: 'default board' }));

  // A fresh client of each room gets that room's snapshot only; storage is per room.
  const fresh = await nodeClient(port, { room: 'team-a' });
  assert.deepEqual(fresh.snapshot(), { 'only-a': 1 });
  fresh.close();
  const keys = await a1.eval('Object.keys(localStorage)');
  assert.ok(keys.some((k) => k.includes('::room::team-a')), keys.join(' '));
  assert.ok(!keys.some((k) => k.includes('team-b')));
  for (const p of [a1, a2, b1, b2, d1]) assert.deepEqual(p.errors, [], p.name);
});

withChromium('a read-only tab cannot change anything: its write is rolled back and nobody sees it', `[auth]\njwt_secret = ${JSON.stringify(SECRET)}\n`, async ({ cdp, port, base }) => {
  const exp = nowS() + 3600;
  const writer = jwt({ sub: 'wendy', exp, rooms: { doc: 'write' } });
  const reader = jwt({ sub: 'rita', exp, rooms: { 'do*': 'read' } });
  const outsider = jwt({ sub: 'otto', exp, rooms: { other: 'write' } });
  const expired = jwt({ sub: 'eve', exp: nowS() - 10, rooms: { doc: 'write' } });
  const [w, r] = await Promise.all([
    ClientPage.start(cdp, base, 'writer', `new Aether(relay, { room: 'doc', token: ${JSON.stringify(writer)} })`),
    ClientPage.start(cdp, base, 'reader', `new Aether(relay, { room: 'doc', token: () => Promise.resolve(${JSON.stringify(reader)}) })`),
  ]);
  await w.waitConnected();
  await w.eval(`aether.set('title', 'the real title').durable.then(() => true)`);
  await r.waitConnected();
  await r.wait(`aether.get('title') === 'the real title'`, 5000, 'reader has the room');
  assert.deepEqual(await r.eval('[aether.user, aether.access, aether.room]'), ['rita', 'read', 'doc']);
  assert.deepEqual(await w.eval('[aether.user, aether.access]'), ['wendy', 'write']);

  // The reader writes: shown at once, then refused (forbidden) and rolled back; never retried.
  const outcome = await r.eval(`(async () => {
    const w = aether.set('title', 'vandalised');
    const shown = aether.get('title');
    const reason = await w.durable.then(() => 'durable', (e) => e.reason);
    return { shown, reason, now: aether.get('title'), pending: aether.pendingWrites() };
  })()`);
  assert.deepEqual(outcome, { shown: 'vandalised', reason: 'forbidden', now: 'the real title', pending: 0 });
  const del = await r.eval(`aether.delete('title').durable.then(() => 'durable', (e) => e.reason)`);
  assert.equal(del, 'forbidden');
  assert.equal(await r.eval(`aether.get('title')`), 'the real title');
  // Presence from a reader is relayed, with its user.
  await r.eval('aether.sendPresence(5, 6), true');
  await w.wait(`log.presence.some((p) => p.x === 5 && p.user === 'rita')`, 5000, 'reader\'s cursor with its user');
  // The writer writes after: the reader gets it, and the writer never saw the reader's attempt.
  await w.eval(`aether.set('after', 1).durable.then(() => true)`);
  await r.wait(`aether.get('after') === 1`, 5000, 'reader receives later writes');
  assert.deepEqual(await w.eval(`log.changes.filter(([k]) => k === 'title').map(([, v]) => v)`), ['the real title']);
  const fresh = await nodeClient(port, { room: 'doc', token: writer });
  assert.equal(fresh.get('title'), 'the real title');
  fresh.close();
  assert.deepEqual(await r.eval('log.status'), ['down:null', 'up'], 'the reader stayed connected');

  // Refusals stop the client: another room's token (4403), an expired token (4401), a bad room (4400).
  const [o, e, bad] = await Promise.all([
    ClientPage.start(cdp, base, 'outsider', `new Aether(relay, { room: 'doc', token: ${JSON.stringify(outsider)} })`),
    ClientPage.start(cdp, base, 'expired', `new Aether(relay, { room: 'doc', token: ${JSON.stringify(expired)} })`),
    ClientPage.start(cdp, base, 'bad room', `new Aether(relay, { room: 'no spaces', token: ${JSON.stringify(writer)} })`),
  ]);
  await o.wait('aether.status.fatal', 5000, 'outsider stopped');
  await e.wait('aether.status.fatal', 5000, 'expired stopped');
  await bad.wait('aether.status.fatal', 5000, 'bad room stopped');
  assert.deepEqual(await o.eval('log.errors'), ['forbidden:4403:forbidden']);
  assert.match((await e.eval('log.errors'))[0], /^auth:4401:/);
  assert.deepEqual(await bad.eval('log.errors'), ['room:4400:bad room']);
  assert.equal(await o.eval('aether.has("title")'), false, 'nothing of the room before the refusal');

  // With a token function a 4401 is retried once, with a fresh token: here the first is expired.
  const again = await ClientPage.start(cdp, base, 'fresh after 4401', `(() => {
    const tokens = [${JSON.stringify(expired)}, ${JSON.stringify(writer)}];
    window.asked = 0;
    return new Aether(relay, { room: 'doc', token: async () => tokens[Math.min(window.asked++, 1)] });
  })()`);
  await again.waitConnected();
  assert.equal(await again.eval('aether.get("title")'), 'the real title');
  assert.equal(await again.eval('window.asked'), 2);
  assert.deepEqual(await again.eval('log.status'), ['down:null', 'down:4401', 'up']);
  assert.deepEqual(await again.eval('log.errors'), []);
});

withChromium('an expiring token is refreshed by the page without a visible disconnect', `[auth]\njwt_secret = ${JSON.stringify(SECRET)}\n`, async ({ cdp, port, base }) => {
  // A token endpoint (what an app's backend would be): every token lives 4 seconds.
  let minted = 0;
  const server = http.createServer((req, res) => {
    minted++;
    const t = nowS();
    res.writeHead(200, { 'content-type': 'text/plain', 'access-control-allow-origin': '*', 'cache-control': 'no-store' });
    res.end(jwt({ sub: 'ada', iat: t, exp: t + 4, rooms: { 'live-*': 'write' } }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const tokenUrl = `http://127.0.0.1:${server.address().port}/token`;
  try {
    const p = await ClientPage.start(cdp, base, 'refreshing', `new Aether(relay, { room: 'live-1', token: () => fetch(${JSON.stringify(tokenUrl)}, { cache: 'no-store' }).then((r) => r.text()) })`);
    await p.waitConnected();
    const id = await p.eval('aether.clientId');
    assert.equal(await p.eval('aether.user'), 'ada');
    const observer = await nodeClient(port, { room: 'live-1', token: jwt({ sub: 'obs', exp: nowS() + 3600, rooms: { 'live-1': 'read' } }) });
    // The control: the same kind of token, fixed (no function to refresh it), is closed at expiry.
    const fixed = await ClientPage.start(cdp, base, 'fixed token', `new Aether(relay, { room: 'live-1', token: ${JSON.stringify(jwt({ sub: 'ada', exp: nowS() + 3, rooms: { 'live-*': 'write' } }))} })`);
    await fixed.waitConnected();
    // Keep writing for three lifetimes of a token.
    const until12 = Date.now() + 12000;
    let n = 0;
    while (Date.now() < until12) {
      n++;
      const r = await p.eval(`aether.set('tick', ${n}).durable.then(() => 'ok', (e) => e.reason)`);
      assert.equal(r, 'ok', 'write ' + n);
      await sleep(250);
    }
    await until(() => observer.get('tick') === n, 5000, 'the observer saw every write arrive');
    assert.ok(minted >= 4, `the function was asked again before each expiry (${minted} tokens)`);
    assert.deepEqual(await fixed.eval('log.errors'), ['auth:4401:token expired'], 'the fixed token was closed at expiry');
    assert.equal(await fixed.eval('aether.status.fatal'), true);
    assert.deepEqual(await p.eval('log.status'), ['down:null', 'up'], 'never disconnected');
    assert.equal(await p.eval('aether.clientId'), id, 'the same connection');
    assert.deepEqual(await p.eval('log.errors'), []);
    assert.deepEqual(p.errors, []);
    observer.close();
  } finally {
    server.close();
  }
});

withChromium('the demos honour ?room=: two teams each on their own board and document', '', async ({ cdp, port, base }) => {
  const cols = `Array.from(document.querySelectorAll('.col')).length`;
  const cardTitles = `Array.from(document.querySelectorAll('.card textarea')).map((t) => t.value).sort().join('|')`;
  const [ta, tb, plain] = await Promise.all([
    DemoPage.open(cdp, `${base}/demos/kanban.html?room=team-a`, 'kanban team-a'),
    DemoPage.open(cdp, `${base}/demos/kanban.html?room=team-b`, 'kanban team-b'),
    DemoPage.open(cdp, `${base}/demos/kanban.html`, 'kanban'),
  ]);
  for (const p of [ta, tb, plain]) await p.wait(`${cols} === 3 && document.getElementById('status').dataset.state === 'connected'`, 10000, 'seeded and connected');
  assert.deepEqual(await ta.eval(`[aether.room, document.getElementById('room').textContent]`), ['team-a', 'room team-a']);
  assert.deepEqual(await plain.eval(`[aether.room, document.getElementById('room').textContent]`), ['kanban', 'room kanban']);
  const teamA = await nodeClient(port, { room: 'team-a' });
  teamA.set('card:from-node', { id: 'from-node', columnId: 'todo', title: 'only team a', order: 1, priority: 'low' });
  await ta.wait(`${cardTitles} === 'only team a'`, 5000, 'team-a shows its card');
  await sleep(300);
  assert.equal(await tb.eval(cardTitles), '', 'team-b never shows it');
  assert.equal(await plain.eval(cardTitles), '', 'room kanban never shows it');
  const kanban = await nodeClient(port, { room: 'kanban' });
  assert.deepEqual(kanban.keys().filter((k) => k.startsWith('card:')), []);
  assert.deepEqual(kanban.keys().filter((k) => k.startsWith('col:')).sort(), ['col:doing', 'col:done', 'col:todo'], 'the plain page seeded room kanban');
  const dflt = await nodeClient(port, {});
  assert.deepEqual(dflt.keys(), [], 'nothing in the default room');

  // The markdown demo: room `markdown`, or ?room=.
  const [ma, mb] = await Promise.all([
    DemoPage.open(cdp, `${base}/demos/markdown.html?room=team-a`, 'markdown team-a'),
    DemoPage.open(cdp, `${base}/demos/markdown.html`, 'markdown'),
  ]);
  for (const p of [ma, mb]) await p.wait(`document.querySelectorAll('#lines .row').length === 18`, 10000, 'seed document');
  assert.equal(await ma.eval('aether.room'), 'team-a');
  assert.equal(await mb.eval('document.getElementById("room").textContent'), 'room markdown');
  // (The page shows its seed at once; the relay has it once sent: wait for it, bounded.)
  await until(() => teamA.keys().filter((k) => k.startsWith('line:')).length === 18, 5000, 'the markdown seed went to team-a beside its board');
  const md = await nodeClient(port, { room: 'markdown' });
  await until(() => md.keys().filter((k) => k.startsWith('line:')).length === 18, 5000, 'the plain page seeded room markdown');
  assert.equal(md.keys().filter((k) => k.startsWith('col:')).length, 0);
  // The topology demo stays in the default room unless told.
  const topo = await DemoPage.open(cdp, `${base}/?room=team-a`, 'topology team-a');
  assert.deepEqual(await topo.eval(`[aether.room, document.getElementById('room').textContent]`), ['team-a', 'room team-a']);
  const topoDefault = await DemoPage.open(cdp, `${base}/`, 'topology');
  assert.deepEqual(await topoDefault.eval(`[aether.room, document.getElementById('room').textContent]`), [null, 'default room']);
  for (const c of [teamA, kanban, dflt, md]) c.close();
  for (const p of [ta, tb, plain, ma, mb, topo, topoDefault]) assert.deepEqual(p.errors, [], p.name);
});

/** A demo page (waits for its `aether`). */
class DemoPage extends PageHandle {}


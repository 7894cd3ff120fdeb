'use strict';
// The operator console (static/console/) in real Chromium against the real relay: the API off
// (404) and a wrong key (401) explained at sign-in; then signed in with `[api] key`, a WebSocket
// client's writes appear live, a key's history and the time slider show the room as it was, a key
// is deleted (If-Match of the shown stamp), the room's members disconnected and the ledger
// compacted through the UI, the /metrics charts draw, no console errors, and a key and value
// holding markup stay text. Saves 1280x800 screenshots (static/console/screenshots/ with
// AETHER_SCREENSHOTS=1). Needs AETHER_BIN and Chromium; skipped otherwise.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, Aether, MemoryStorage, until, sleep, aetherBin, loadWs, browserSkip, screenshotDir } = require('./helpers');
const { PageHandle, startRelay, stopRelay, launchChromium, killChromium } = require('./devtools');

const BIN = aetherBin();
const WS = loadWs();
const skip = browserSkip(BIN);
const STATIC = path.join(__dirname, '..', '..', 'static');
const SHOTS = screenshotDir(STATIC, 'console');
const KEY = 'console-test-key-0123456789';
const XSS = '<img src=x onerror=window.__xss=1>';
const SECRET = 'console-test-secret-' + crypto.randomBytes(8).toString('hex');
const USER = 'alice<b onmouseover=window.__xss=2>';

/** An HS256 JWT over `claims` (the relay's `[auth] jwt_secret`). */
function jwt(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const head = b64({ alg: 'HS256', typ: 'JWT' }) + '.' + b64(claims);
  return head + '.' + crypto.createHmac('sha256', SECRET).update(head).digest('base64url');
}

class ConsolePage extends PageHandle {
  async goto(url) {
    await this.cdp.send('Page.navigate', { url }, this.session);
    await this.wait('document.readyState === "complete" && !!window.aetherConsole', 15000, 'console load');
  }
  async screenshot(file) {
    const { data } = await this.cdp.send('Page.captureScreenshot', { format: 'png', clip: { x: 0, y: 0, width: 1280, height: 800, scale: 1 } }, this.session);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, Buffer.from(data, 'base64'));
  }
  signIn(key) {
    return this.eval(`(() => { document.getElementById('key').value = ${JSON.stringify(key)}; document.getElementById('signin-form').requestSubmit(); return true; })()`);
  }
  click(selector) {
    return this.eval(`(() => { const el = document.querySelector(${JSON.stringify(selector)}); if (!el) throw new Error('no ' + ${JSON.stringify(selector)}); el.click(); return true; })()`);
  }
  /** Clicks `selector`, then Confirm in the page's dialog. */
  async confirm(selector) {
    await this.click(selector);
    await this.wait(`document.getElementById('confirm').open`, 5000, 'confirm dialog');
    await this.click('#confirm-ok');
  }
  /** The shown value of `key` in the room table (JSON text), or null. */
  value(key) {
    return this.eval(`(() => { const tr = Array.from(document.querySelectorAll('#keys tbody tr')).find((r) => r.dataset.key === ${JSON.stringify(key)}); return tr ? tr.querySelector('.v').textContent : null; })()`);
  }
  waitValue(key, text, what) {
    return this.wait(`(() => { const tr = Array.from(document.querySelectorAll('#keys tbody tr')).find((r) => r.dataset.key === ${JSON.stringify(key)}); return !!tr && tr.querySelector('.v').textContent === ${JSON.stringify(text)}; })()`, 10000, what);
  }
  waitLog(re, what) {
    return this.wait(`${re}.test(document.getElementById('log').textContent)`, 15000, what);
  }
}

test('console: sign-in, live rooms and keys, history and the time slider, actions, charts, XSS, screenshots', { skip, timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-console-'));
  let relay = null;
  let chromium = null;
  let probe = null;
  let alice = null;
  try {
    chromium = await launchChromium(dir);
    const { cdp } = chromium;

    // The API off: the sign-in says how to turn it on.
    relay = await startRelay(dir, 0, path.join(dir, 'off.jsonl'));
    const off = await ConsolePage.open(cdp, `http://127.0.0.1:${relay.port}/console/`, 'console (API off)');
    await off.signIn(KEY);
    await off.wait(`!document.getElementById('signin-msg').hidden && /404/.test(document.getElementById('signin-msg').textContent)`, 10000, 'API-off message');
    assert.match(await off.eval(`document.getElementById('signin-msg').textContent`), /\[api\]\nkey = /);
    assert.equal(await off.eval(`sessionStorage.getItem('aether-console-key')`), null);
    assert.deepEqual(off.errors, []);
    await stopRelay(relay);

    relay = await startRelay(dir, 0, path.join(dir, 'ledger.jsonl'), STATIC, `[api]\nkey = "${KEY}"\n[auth]\njwt_secret = ${JSON.stringify(SECRET)}\n`);
    const base = `http://127.0.0.1:${relay.port}`;
    probe = new Aether(`ws://127.0.0.1:${relay.port}/ws`, { room: 'ops', token: jwt({ sub: 'probe', exp: Math.floor(Date.now() / 1000) + 600, rooms: { ops: 'write' } }), WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => probe.connected, 10000, 'probe connected');
    await probe.set('temp', 21).durable;
    await sleep(20); // two writes some milliseconds apart, so the slider can stand between them
    await probe.set('fan', { on: true, rpm: 1200 }).durable;

    const page = await ConsolePage.open(cdp, `${base}/console/`, 'console');
    await page.wait(`!document.getElementById('signin').hidden`, 5000, 'sign-in form');

    // A wrong key: 401, explained, not kept.
    await page.signIn('not-the-key-at-all');
    await page.wait(`/401/.test(document.getElementById('signin-msg').textContent)`, 10000, '401 message');
    assert.equal(await page.eval(`document.getElementById('status').dataset.state`), 'refused');
    assert.equal(await page.eval(`document.getElementById('app').hidden`), true);
    assert.equal(await page.eval(`sessionStorage.getItem('aether-console-key')`), null);
    await page.screenshot(path.join(SHOTS, 'console-signin.png'));

    // The key: rooms with their members.
    await page.signIn(KEY);
    await page.wait(`!!document.querySelector('#rooms li[data-room="ops"]')`, 10000, 'room ops listed');
    assert.equal(await page.eval(`sessionStorage.getItem('aether-console-key')`), KEY);
    assert.equal(await page.eval(`document.querySelector('#rooms li[data-room="_"] .rname').textContent`), '_ (default room)');
    await page.wait(`document.querySelector('#rooms li[data-room="ops"] .meta').textContent === '2 keys · 1 online'`, 10000, 'ops: 2 keys, 1 member');
    // Connected clients (GET /api/v1/clients): the probe, with its address, protocol and room.
    await page.wait(`document.querySelector('#clients tbody tr[data-room="ops"]') !== null`, 5000, 'clients row');
    assert.deepEqual(await page.eval(`Array.from(document.querySelectorAll('#clients tbody tr[data-room="ops"] td')).map((td) => td.textContent)`), ['127.0.0.1', 'v2', 'probe', 'ops']);
    assert.equal(await page.eval(`document.getElementById('clients-count').textContent`), '1');

    // Select the room: its keys; a WebSocket write appears live.
    await page.click('#rooms li[data-room="ops"]');
    await page.waitValue('temp', '21', 'temp = 21');
    // Live by the change feed where the relay has one, else by polling; the header says which.
    const ctl = new AbortController();
    const feedStatus = (await fetch(`${base}/api/v1/rooms/ops/changes`, { headers: { Authorization: 'Bearer ' + KEY }, signal: ctl.signal })).status;
    ctl.abort();
    const mode = feedStatus === 200 ? 'feed' : 'poll';
    await page.wait(`document.getElementById('room-live').dataset.mode === ${JSON.stringify(mode)}`, 10000, 'live by ' + mode);
    assert.equal(await page.value('fan'), '{"on":true,"rpm":1200}');
    await probe.set('temp', 22).durable;
    await page.waitValue('temp', '22', 'the WebSocket write, live');

    // Markup in a key and a value stays text.
    await probe.set(XSS, XSS).durable;
    await page.waitValue(XSS, JSON.stringify(XSS), 'the markup key, as text');
    await page.click(`#keys tbody tr[data-key="${XSS.replace(/"/g, '\\"')}"]`);
    await page.wait(`document.querySelector('#key-detail .kname') && document.querySelector('#key-detail .kname').textContent === ${JSON.stringify(XSS)}`, 5000, 'markup key detail');
    await page.wait(`document.querySelectorAll('#history li').length === 1`, 5000, 'markup key history');
    assert.equal(await page.eval(`document.querySelectorAll('img, [onerror]').length`), 0);
    assert.equal(await page.eval('window.__xss'), undefined);

    // A key's history, and the room as it was at its first write.
    await page.click('#keys tbody tr[data-key="temp"]');
    await page.wait(`document.querySelectorAll('#history li').length === 2`, 10000, 'two writes of temp');
    assert.deepEqual(await page.eval(`Array.from(document.querySelectorAll('#history .hv')).map((e) => e.textContent)`), ['22', '21']);
    assert.match(await page.eval(`document.getElementById('key-stamp').textContent`), /^stamp \d{20}\.\d{10}\.\S+$/);
    // Some load for the charts (a write every 50 ms for 4 s), then the screenshot.
    for (let i = 0; i < 80; i++) {
      probe.set('load', i);
      await sleep(50);
    }
    await until(() => probe.get('load') === 79, 5000, 'load written');
    await page.wait(`document.querySelector('#chart-writes .line').getAttribute('points').split(' ').length >= 3`, 10000, 'writes/s chart');
    await page.screenshot(path.join(SHOTS, 'console.png'));
    await page.click('#history li:last-child'); // the oldest write
    await page.waitValue('temp', '21', 'the room at the first write');
    assert.equal(await page.value('fan'), null, 'fan was written after');
    assert.equal(await page.eval(`document.getElementById('room-mode').hidden`), false);
    assert.equal(await page.eval(`document.getElementById('room-live').hidden`), true, 'the past is not live');
    assert.match(await page.eval(`document.getElementById('slider-label').textContent`), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
    await sleep(300);
    await page.screenshot(path.join(SHOTS, 'console-history.png'));
    // The slider itself: its right end is live, its left end the first write.
    const slide = (to) => page.eval(`(() => { const s = document.getElementById('slider'); s.value = ${to === 'end' ? 's.max' : to}; s.dispatchEvent(new Event('input', { bubbles: true })); return true; })()`);
    await slide('end');
    await page.waitValue('temp', '22', 'live again at the right end');
    await page.wait(`document.getElementById('slider-label').textContent === 'live'`, 5000, 'live label');
    await slide(0);
    await page.waitValue('temp', '21', 'the left end: the first write');
    await page.click('#live');
    await page.waitValue('temp', '22', 'back to live');
    await page.waitValue('fan', '{"on":true,"rpm":1200}', 'fan back');
    assert.equal(await page.eval(`document.getElementById('room-mode').hidden`), true);

    // Delete a key through the UI (If-Match of the shown stamp): the WebSocket client sees it go.
    await page.click('#keys tbody tr[data-key="temp"]');
    await page.wait(`!document.getElementById('delete-key').hidden`, 5000, 'delete button');
    await page.confirm('#delete-key');
    await page.waitLog(/deleted "temp" in ops/, 'delete result');
    await until(() => !probe.has('temp'), 10000, 'the probe sees temp deleted');
    await page.wait(`!Array.from(document.querySelectorAll('#keys tbody tr')).some((r) => r.dataset.key === 'temp')`, 10000, 'temp gone from the table');

    // Disconnect one user (a JWT client whose sub holds markup: shown as text).
    alice = new Aether(`ws://127.0.0.1:${relay.port}/ws`, { room: 'ops', token: jwt({ sub: USER, exp: Math.floor(Date.now() / 1000) + 600, rooms: { ops: 'write' } }), WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => alice.connected, 10000, 'alice connected');
    const aliceCloses = [];
    alice.onStatus((connected, status) => connected || aliceCloses.push(status.code));
    await page.wait(`Array.from(document.querySelectorAll('#room-users .chip')).some((c) => c.dataset.user === ${JSON.stringify(USER)})`, 10000, 'alice in the room header');
    // (Users only: with the change feed, the console's own feed is a member without a user.)
    assert.deepEqual(await page.eval(`Array.from(document.querySelectorAll('#clients tbody tr[data-room="ops"]')).map((tr) => tr.children[2].textContent).filter((u) => u !== '—').sort()`), ['probe', USER].sort());
    await page.confirm(`#room-users .chip[data-user="${USER.replace(/"/g, '\\"')}"] button`);
    await page.waitLog(/disconnected 1 connection \(user "alice<b onmouseover=window.__xss=2>" in room ops\)/, 'user disconnect result');
    await until(() => aliceCloses.includes(4410), 10000, 'alice closed with 4410');
    await until(() => alice.connected, 15000, 'alice reconnected (4410 is not a ban)'); // closing while it reconnects races its handshake
    alice.close();
    await page.wait(`Array.from(document.querySelectorAll('#clients tbody tr[data-room="ops"]')).filter((tr) => tr.children[2].textContent !== '—').length === 1`, 10000, 'only the probe left');
    assert.equal(await page.eval(`document.querySelectorAll('#room-users b, #clients b').length`), 0);

    // Disconnect everyone in the room: the probe's connection is closed.
    const probeCloses = [];
    probe.onStatus((connected, status) => connected || probeCloses.push(status.code));
    await page.wait(`!document.getElementById('disconnect-all').disabled`, 10000, 'disconnect enabled');
    await page.confirm('#disconnect-all');
    await page.waitLog(/disconnected [12] connections? \(everyone in room ops\)/, 'disconnect result'); // 2 when the console follows the change feed
    await until(() => probeCloses.includes(4410), 10000, 'probe closed with 4410');
    await until(() => probe.connected, 15000, 'probe reconnected');

    // Compact now.
    await page.confirm('#compact');
    await page.waitLog(/compacted in [\d.]+ ms: snapshot/, 'compact result');

    // The charts drew from /metrics; no mesh here.
    await page.wait(`document.querySelector('#chart-writes .line').getAttribute('points').split(' ').length >= 2`, 10000, 'writes/s chart');
    await page.wait(`/^\\d+$/.test(document.querySelector('#chart-connections .val').textContent)`, 5000, 'connections value');
    assert.equal(await page.eval(`document.getElementById('mesh-panel').hidden`), true);
    const parsed = await page.eval(`(() => { const m = window.aetherConsole.parseMetrics('a_total 3\\nh_bucket{le="0.1"} 1\\nh_bucket{le="1"} 3\\nh_bucket{le="+Inf"} 4\\nx{peer="a\\\\"b"} 2\\n# HELP z\\n'); return [m.get('a_total')[0].value, m.get('h_bucket')[2].value, m.get('x')[0].labels.peer]; })()`);
    assert.deepEqual(parsed, [3, 4, 'a"b']);

    assert.equal(await page.eval('window.__xss'), undefined);
    assert.equal(await page.eval(`document.querySelectorAll('img, [onerror]').length`), 0);
    assert.deepEqual(page.errors, []);

    // Sign out forgets the key.
    await page.click('#signout');
    assert.equal(await page.eval(`sessionStorage.getItem('aether-console-key')`), null);
    assert.equal(await page.eval(`document.getElementById('signin').hidden`), false);
  } finally {
    if (probe) probe.close();
    if (alice) alice.close();
    if (chromium) {
      chromium.cdp.close();
      killChromium(chromium.proc);
    }
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('console: mesh peers with their link and lag', { skip, timeout: 60000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-console-mesh-'));
  let relayA = null;
  let relayB = null;
  let chromium = null;
  try {
    for (const d of ['a', 'b']) fs.mkdirSync(path.join(dir, d));
    const api = `[api]\nkey = "${KEY}"\n`;
    relayA = await startRelay(path.join(dir, 'a'), 0, path.join(dir, 'a', 'l.jsonl'), STATIC, `${api}[mesh]\nnode_id = "node-a"\nbind = "127.0.0.1:0"\n`);
    relayB = await startRelay(
      path.join(dir, 'b'), 0, path.join(dir, 'b', 'l.jsonl'), STATIC,
      `${api}[mesh]\nnode_id = "node-b"\nbind = "127.0.0.1:0"\npeers = [${JSON.stringify('ws://' + relayA.mesh)}]\nredial_min_s = 0.05\nredial_max_s = 0.5\n`,
    );
    chromium = await launchChromium(dir);
    const page = await ConsolePage.open(chromium.cdp, `http://127.0.0.1:${relayA.port}/console/`, 'console (mesh)');
    await page.signIn(KEY);
    await page.wait(`!document.getElementById('mesh-panel').hidden`, 10000, 'mesh panel shown');
    assert.equal(await page.eval(`document.getElementById('mesh-node').textContent`), 'this node node-a');
    await page.wait(`(() => { const tr = document.querySelector('#mesh tbody tr[data-peer="node-b"]'); return !!tr && tr.children[1].textContent === 'up'; })()`, 15000, 'node-b up');
    // A write on B reaches A: the peer's lag and ops in show.
    const put = await fetch(`http://127.0.0.1:${relayB.port}/api/v1/rooms/_/keys/from-b`, { method: 'PUT', headers: { Authorization: 'Bearer ' + KEY }, body: '"hello"' });
    assert.equal(put.status, 200);
    await page.wait(`(() => { const tr = document.querySelector('#mesh tbody tr[data-peer="node-b"]'); return !!tr && /^\\d+\\.\\d ms$/.test(tr.children[2].textContent) && /^[1-9]\\d* \\/ \\d+$/.test(tr.children[3].textContent); })()`, 15000, 'lag and ops in from node-b');
    assert.deepEqual(page.errors, []);
  } finally {
    if (chromium) {
      chromium.cdp.close();
      killChromium(chromium.proc);
    }
    await stopRelay(relayB);
    await stopRelay(relayA);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

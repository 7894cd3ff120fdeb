'use strict';
// The offline app shell (static/sw.js) and the examples (static/examples/) in real headless
// Chromium against the real relay: a demo opened once reloads with the relay stopped (served by
// the service worker), renders its last state, keeps edits in the outbox across reloads and sends
// them when the relay is back, without a reload; the two counter examples load without console
// errors and sync between two browser contexts; after the relay ships a changed page (and a new
// service worker version) a reload picks it up, online and then offline.
// Needs AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH); skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, Aether, MemoryStorage, until, sleep, aetherBin, loadWs, browserSkip } = require('./helpers');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');
const WS = loadWs();
const skip = browserSkip(BIN);
const { PageHandle, startRelay, stopRelay, launchChromium, closeChromium } = require('./devtools');

/** One tab in its own browser context (own storage, caches and service workers). */
class Tab extends PageHandle {
  /** An ordinary reload (not a hard one: that would bypass the service worker). */
  reload() {
    return super.reload({ ignoreCache: false });
  }
  /** Waits until the service worker controls this page and has precached `path`. */
  shellReady(pathname) {
    return this.wait(`(async () => !!navigator.serviceWorker.controller &&
      !!(await caches.match(${JSON.stringify(pathname)})))()`, 15000, 'service worker in control, ' + pathname + ' precached');
  }
}


const STATUS = `document.getElementById('status').dataset.state + ' | ' + document.querySelector('#status .text').textContent`;
const connected = `document.getElementById('status').dataset.state === 'connected'`;
const offline = `document.getElementById('status').dataset.state === 'offline'`;
const waitingN = (n) => `document.querySelector('#status .text').textContent === 'offline · ${n} change${n === 1 ? '' : 's'} waiting'`;
const TITLES = `Array.from(document.querySelectorAll('.card textarea')).map((t) => t.value).sort().join(' | ')`;
/** Adds a card to column `colId` and types `title` into it (then blurs: the save). */
function addCardJs(colId, title) {
  return `(async () => {
    const before = new Set(Array.from(document.querySelectorAll('.card')).map((k) => k.dataset.card));
    document.querySelector('.col[data-col=${JSON.stringify(colId)}] .add-card').click();
    const card = Array.from(document.querySelectorAll('.card')).find((k) => !before.has(k.dataset.card));
    const t = card.querySelector('textarea');
    t.value = ${JSON.stringify(title)};
    t.dispatchEvent(new Event('input', { bubbles: true }));
    t.blur();
    return card.dataset.card;
  })()`;
}
/** The page came from the service worker (its navigation went through a worker). */
const FROM_SW = `!!navigator.serviceWorker.controller && performance.getEntriesByType('navigation')[0].workerStart > 0`;

test('offline shell: a demo reloads with the relay stopped, keeps edits across reloads and syncs them after, without a reload', { skip, timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-shell-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  let relay = null;
  let chromium = null;
  let probe = null;
  try {
    relay = await startRelay(dir, 0, ledger);
    const port = relay.port;
    const base = `http://127.0.0.1:${port}`;
    chromium = await launchChromium(dir);
    const { cdp } = chromium;

    const kUrl = `${base}/demos/kanban.html`;
    const a = await Tab.open(cdp, kUrl, 'kanban A');
    const b = await Tab.open(cdp, kUrl, 'kanban B');
    for (const tab of [a, b]) {
      await tab.wait(`document.querySelectorAll('.col').length === 3`, 10000, '3 seed columns');
      await tab.wait(connected, 10000, 'connected');
    }
    await a.shellReady('/demos/kanban.html');
    // Everything the page needs is precached (and nothing live is).
    const cached = await a.eval(`(async () => (await (await caches.open('aether-shell-v1')).keys()).map((r) => new URL(r.url).pathname).sort())()`);
    for (const p of ['/', '/demos/kanban.html', '/demos/markdown.html', '/demos/demo.css', '/demos/demo-common.js', '/aether.js', '/aether.mjs', '/aether-react.mjs', '/topology/topology.js', '/topology/topology.css']) {
      assert.ok(cached.includes(p), p + ' precached: ' + cached.join(' '));
    }
    for (const p of ['/ws', '/healthz', '/metrics', '/sw.js']) assert.ok(!cached.includes(p), p + ' never cached');
    // /healthz goes to the relay, untouched by the worker.
    assert.equal(await a.eval(`fetch('/healthz').then((r) => r.status)`), 200);

    const online = await a.eval(addCardJs('todo', 'before the outage'));
    await b.wait(`${TITLES} === 'before the outage'`, 10000, 'B sees the first card');
    await a.wait(connected, 10000, 'A: the card is durable');

    // The relay stops; A reloads: the page comes from the service worker with its last state.
    await stopRelay(relay);
    await a.wait(offline, 10000, 'A offline');
    await b.wait(offline, 10000, 'B offline');
    await a.reload();
    assert.equal(await a.eval(FROM_SW), true, 'served by the service worker');
    await a.wait(`${TITLES} === 'before the outage'`, 5000, 'A renders the last state offline');
    assert.equal(await a.eval(`document.querySelectorAll('.col').length`), 3);
    assert.equal(await a.eval(STATUS), 'offline | offline · reconnecting…');

    // An edit offline, another reload: still there, still waiting.
    const c2 = await a.eval(addCardJs('doing', 'written offline'));
    await a.wait(`${TITLES} === 'before the outage | written offline'`, 5000, 'A shows the offline card');
    await a.wait(`/^offline · [1-9]\\d* changes? waiting$/.test(document.querySelector('#status .text').textContent)`, 5000, 'changes waiting');
    const waitingBefore = await a.eval(`aether.pendingWrites()`);
    await a.reload();
    assert.equal(await a.eval(FROM_SW), true, 'served by the service worker again');
    await a.wait(`${TITLES} === 'before the outage | written offline'`, 5000, 'the offline card survives the reload');
    await a.wait(waitingN(waitingBefore), 5000, 'the status still counts the waiting changes');
    // And the markdown demo, never opened in this context, still comes from the precache.
    await a.goto(`${base}/demos/markdown.html`);
    assert.equal(await a.eval(FROM_SW), true);
    // (Never opened here, so there is no state to show yet; the page itself works and says so.)
    await a.wait(`!!document.getElementById('lines') && ${offline}`, 5000, 'markdown page offline');
    await a.goto(`${base}/`); // the topology demo
    assert.equal(await a.eval(FROM_SW), true);
    assert.equal(await a.eval(`getComputedStyle(document.body).margin !== '' && document.styleSheets.length > 0`), true);
    await a.goto(kUrl);
    await a.wait(`${TITLES} === 'before the outage | written offline'`, 5000, 'back on the board');

    // The relay comes back on the same port and ledger: nobody reloads.
    relay = await startRelay(dir, port, ledger);
    await b.wait(`${TITLES} === 'before the outage | written offline'`, 20000, 'B gets the offline card without a reload');
    await a.wait(connected, 20000, 'A reconnected, nothing waiting');
    assert.match(await a.eval(STATUS), new RegExp(`^connected \\| connected · 127\\.0\\.0\\.1:${port}$`));
    probe = new Aether(`ws://127.0.0.1:${port}/ws`, { WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => probe.connected && probe.isReady, 10000, 'probe');
    assert.equal(probe.get('card:' + online).title, 'before the outage');
    assert.equal(probe.get('card:' + c2).title, 'written offline');
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
  } finally {
    if (probe) probe.close();
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('examples: the vanilla and the React counter load without errors and sync between two browsers', { skip, timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-examples-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  let relay = null;
  let chromium = null;
  try {
    relay = await startRelay(dir, 0, ledger);
    const base = `http://127.0.0.1:${relay.port}`;
    chromium = await launchChromium(dir);
    const { cdp } = chromium;
    const count = (tab) => tab.eval(`Number(document.getElementById('count').textContent)`);
    const click = (tab, n) => tab.eval(`(() => { for (let i = 0; i < ${n}; i++) document.getElementById('click').click(); return true; })()`);
    const status = `document.getElementById('status').dataset.state`;

    const v1 = await Tab.open(cdp, `${base}/examples/vanilla-counter.html`, 'vanilla 1');
    const v2 = await Tab.open(cdp, `${base}/examples/vanilla-counter.html`, 'vanilla 2');
    for (const t of [v1, v2]) await t.wait(`${status} === 'connected'`, 10000, 'connected');
    await Promise.all([click(v1, 3), click(v2, 4)]); // concurrent clicks: none lost
    for (const t of [v1, v2]) await t.wait(`Number(document.getElementById('count').textContent) === 7`, 10000, '7 clicks');

    const r1 = await Tab.open(cdp, `${base}/examples/react-counter.html`, 'react 1');
    const r2 = await Tab.open(cdp, `${base}/examples/react-counter.html`, 'react 2');
    for (const t of [r1, r2]) {
      await t.wait(`!!document.getElementById('count') && ${status} === 'connected'`, 10000, 'rendered, connected');
      await t.wait(`Number(document.getElementById('count').textContent) === 7`, 10000, 'the same 7 clicks');
    }
    await Promise.all([click(r1, 2), click(r2, 5)]);
    for (const t of [r1, r2, v1, v2]) await t.wait(`Number(document.getElementById('count').textContent) === 14`, 10000, '14 clicks');
    // useAether: the label is one shared key.
    await r1.eval(`(() => { const i = document.querySelector('input'); Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(i, 'Taps'); i.dispatchEvent(new Event('input', { bubbles: true })); return true; })()`);
    await r2.wait(`document.querySelector('input').value === 'Taps'`, 10000, 'label synced');
    assert.equal(await count(r2), 14);
    for (const t of [v1, v2, r1, r2]) await t.wait(`${status} === 'connected'`, 10000, 'settled');

    // Both examples are in the offline shell too: with the relay down they load and count.
    await r1.shellReady('/examples/react-counter.html');
    await v1.shellReady('/examples/vanilla-counter.html');
    await stopRelay(relay);
    await r1.reload();
    await r1.wait(`!!document.getElementById('count') && Number(document.getElementById('count').textContent) === 14`, 10000, 'react: last state offline');
    await click(r1, 1);
    await r1.wait(`${status} === 'offline' && Number(document.getElementById('count').textContent) === 15 && /waiting/.test(document.getElementById('status').textContent)`, 10000, 'react: offline click waits');
    await v1.reload();
    await v1.wait(`Number(document.getElementById('count').textContent) === 14 && ${status} === 'offline'`, 10000, 'vanilla: last state offline');
    relay = await startRelay(dir, relay.port, ledger);
    for (const t of [v1, v2, r2]) await t.wait(`Number(document.getElementById('count').textContent) === 15`, 20000, 'the offline click arrives');
    await r1.wait(`${status} === 'connected'`, 20000, 'react reconnected');

    for (const t of [v1, v2, r1, r2]) assert.deepEqual(t.errors, [], t.name + ' console errors');
  } finally {
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('offline shell upgrade: a changed page and a new worker version reach the browser on reload, online and offline', { skip, timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-shell-up-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  const site = path.join(dir, 'static');
  fs.cpSync(STATIC, site, { recursive: true, filter: (src) => !src.includes(path.join('demos', 'screenshots')) });
  const kanban = path.join(site, 'demos', 'kanban.html');
  const sw = path.join(site, 'sw.js');
  const edit = (file, from, to) => {
    const text = fs.readFileSync(file, 'utf8');
    assert.ok(text.includes(from), `${file} contains ${from}`);
    fs.writeFileSync(file, text.replace(from, to));
  };
  let relay = null;
  let chromium = null;
  try {
    relay = await startRelay(dir, 0, ledger, site);
    const port = relay.port;
    chromium = await launchChromium(dir);
    const tab = await Tab.open(chromium.cdp, `http://127.0.0.1:${port}/demos/kanban.html`, 'kanban');
    await tab.wait(connected, 10000, 'connected');
    await tab.shellReady('/demos/kanban.html');
    const footer = `document.querySelector('footer').textContent`;
    assert.ok(!(await tab.eval(footer)).includes('marker'));

    // A changed page, same worker: network-first, so an ordinary reload shows it.
    edit(kanban, 'Built on aether-actix', 'Built on aether-actix (marker 2)');
    await tab.reload();
    assert.match(await tab.eval(footer), /marker 2/);

    // A changed page and a new worker version: the new worker takes over and drops the old cache.
    edit(kanban, '(marker 2)', '(marker 3)');
    edit(sw, `const VERSION = 'v1';`, `const VERSION = 'v2-test';`);
    await tab.reload();
    assert.match(await tab.eval(footer), /marker 3/);
    await tab.wait(`(async () => (await caches.keys()).join(',') === 'aether-shell-v2-test')()`, 15000, 'only the new cache is left');
    await tab.wait(`(async () => { const r = await navigator.serviceWorker.getRegistration(); return !!(r && r.active && !r.waiting && !r.installing) && navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL === r.active.scriptURL; })()`, 15000, 'the new worker controls the page');
    await tab.shellReady('/demos/kanban.html');

    // Offline now: the reload gets the new version from the new cache, not a stale one.
    await stopRelay(relay);
    await tab.wait(offline, 10000, 'offline');
    await tab.reload();
    assert.equal(await tab.eval(FROM_SW), true);
    assert.match(await tab.eval(footer), /marker 3/);
    assert.equal(await tab.eval(`document.querySelectorAll('.col').length`), 3, 'the board from localStorage');
    assert.deepEqual(tab.errors, []);
  } finally {
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

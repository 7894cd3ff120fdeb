'use strict';
// The offline app shell (static/sw.js) and the examples (static/examples/) in real headless
// Chromium against the real relay: a demo opened once reloads with the relay stopped (served by
// the service worker), renders its last state, keeps edits in the outbox across reloads and sends
// them when the relay is back, without a reload; the two counter examples load without console
// errors and sync between two browser contexts; React hooks on the example page under StrictMode
// open one socket per configuration, close the old one on a token change and the last on unmount;
// the shell is one versioned unit: changed files reach a page only with a new version, every page
// load runs one version's page and client, a new version waits while two windows run the old one
// and then takes over the last one alone, a failed precache keeps the old worker and cache, and
// nothing but the listed shell is ever cached or answered from a cache (a same-origin API-like GET
// with a query and no-store goes to the network, offline too). The shell list and its VERSION are checked without a browser.
// The browser tests need AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH).

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, Aether, MemoryStorage, until, sleep, aetherBin, loadWs, browserSkip } = require('./helpers');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');
const WS = loadWs();
const skip = browserSkip(BIN);
const { PageHandle, startRelay, stopRelay, launchChromium, closeChromium } = require('./devtools');

/** PRECACHE and VERSION as written in a copy of sw.js. */
function shellOf(swText) {
  const list = /const PRECACHE = \[([\s\S]*?)\];/.exec(swText);
  const version = /const VERSION = '([^']*)';/.exec(swText);
  assert.ok(list && version, 'sw.js declares PRECACHE and VERSION');
  return { precache: Array.from(list[1].matchAll(/'([^']*)'/g), (m) => m[1]), version: version[1] };
}
/** The file the relay serves for a shell URL. */
const fileOf = (dir, url) => path.join(dir, url === '/' ? 'index.html' : url.slice(1));
/** What VERSION must be: a hash of sw.js (its VERSION blanked) and of every listed file, in order. */
function shellHash(dir) {
  const text = fs.readFileSync(path.join(dir, 'sw.js'), 'utf8');
  const h = crypto.createHash('sha256');
  h.update(text.replace(/const VERSION = '[^']*';/, "const VERSION = '';"));
  for (const url of shellOf(text).precache) {
    h.update('\0' + url + '\0');
    h.update(fs.readFileSync(fileOf(dir, url)));
  }
  return h.digest('hex').slice(0, 16);
}
const SHELL = shellOf(fs.readFileSync(path.join(STATIC, 'sw.js'), 'utf8'));
const CACHE = 'aether-shell-' + SHELL.version;

/** Same-origin files a shell file loads: scripts, stylesheets, import maps, module imports, CSS url()s. */
function loadsOf(url, text) {
  const refs = [];
  if (url === '/' || url.endsWith('.html')) {
    for (const m of text.matchAll(/<script\b[^>]*\bsrc="([^"]+)"/g)) refs.push(m[1]);
    for (const m of text.matchAll(/<link\b[^>]*\bhref="([^"]+)"/g)) refs.push(m[1]);
    for (const m of text.matchAll(/<script type="importmap">([\s\S]*?)<\/script>/g)) refs.push(...Object.values(JSON.parse(m[1]).imports || {}));
  }
  if (/\.(html|m?js)$/.test(url) || url === '/') {
    for (const m of text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"]([./][^'"]*)['"]/g)) refs.push(m[1]);
  }
  if (url.endsWith('.css')) for (const m of text.matchAll(/url\(\s*['"]?([^'")]+)/g)) if (!m[1].startsWith('data:')) refs.push(m[1]);
  const base = new URL(url, 'http://shell.test');
  return refs.map((r) => new URL(r, base)).filter((u) => u.origin === base.origin).map((u) => u.pathname);
}

test('the shell list: every listed file exists, every file the shell loads is listed, VERSION is the hash of the shell', () => {
  const listed = new Set(SHELL.precache);
  assert.equal(listed.size, SHELL.precache.length, 'no URL listed twice');
  for (const url of SHELL.precache) {
    assert.ok(fs.existsSync(fileOf(STATIC, url)), url + ' exists in static/');
    assert.ok(!/[?#]/.test(url), url + ': no query or fragment');
  }
  assert.ok(!listed.has('/sw.js'), 'the worker itself is never cached');
  const missing = [];
  for (const url of SHELL.precache) {
    for (const dep of loadsOf(url, fs.readFileSync(fileOf(STATIC, url), 'utf8'))) {
      if (!listed.has(dep) && dep !== '/sw.js') missing.push(`${url} loads ${dep}`);
    }
  }
  assert.deepEqual(missing, [], 'add these to PRECACHE in static/sw.js');
  const want = shellHash(STATIC);
  assert.equal(SHELL.version, want, `a shell file changed: set static/sw.js to  const VERSION = '${want}';`);
});

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
    const cached = await a.eval(`(async () => (await (await caches.open(${JSON.stringify(CACHE)})).keys()).map((r) => new URL(r.url).pathname + new URL(r.url).search).sort())()`);
    assert.deepEqual(cached, [...SHELL.precache].sort(), 'exactly the shell is cached');
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
    probe = new Aether(`ws://127.0.0.1:${port}/ws`, { room: 'kanban', WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
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

/** Injected before a page's own scripts: every WebSocket the page makes, in order. */
const RECORD_SOCKETS = `(() => {
  const Native = window.WebSocket;
  window.__sockets = [];
  window.WebSocket = class extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      window.__sockets.push(this);
    }
  };
})();`;

test('React hooks in Chromium against the relay: StrictMode opens one socket per configuration, a token change closes the old one, unmount the last', { skip, timeout: 90000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-hooks-'));
  let relay = null;
  let chromium = null;
  try {
    relay = await startRelay(dir, 0, path.join(dir, 'ledger.jsonl'));
    chromium = await launchChromium(dir);
    const tab = await Tab.open(chromium.cdp, null, 'react');
    await chromium.cdp.send('Page.addScriptToEvaluateOnNewDocument', { source: RECORD_SOCKETS }, tab.session);
    await tab.goto(`http://127.0.0.1:${relay.port}/examples/react-counter.html`);
    await tab.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'the example connected');
    assert.equal(await tab.eval(`window.__sockets.length`), 1, 'the example: one client (getAether), one socket, under StrictMode');
    // A second root, StrictMode, hooks with a token of their own: open, switch the token, unmount.
    const open = `window.__sockets.slice(1).filter((s) => s.readyState <= 1).map((s) => new URL(s.url).searchParams.get('auth_token'))`;
    await tab.eval(`(async () => {
      const React = (await import('react')).default;
      const { createRoot } = await import('react-dom/client');
      const { useAether } = await import('/aether-react.mjs');
      const h = React.createElement;
      function Probe({ token }) {
        const [value, setValue, meta] = useAether('hooks:probe', 'none', { authToken: token, cacheKey: 'aether::hooks-probe' });
        React.useEffect(() => { if (meta.connected) setValue('written with ' + token); }, [meta.connected, token, setValue]);
        return h('output', { id: 'probe' }, token + '|' + meta.connected + '|' + value);
      }
      const div = document.body.appendChild(document.createElement('div'));
      const root = createRoot(div);
      window.__probe = (token) => token ? root.render(h(React.StrictMode, null, h(Probe, { token }), h(Probe, { token }))) : root.unmount();
      window.__probe('t1');
      return true;
    })()`);
    await tab.wait(`document.getElementById('probe')?.textContent === 't1|true|written with t1'`, 10000, 'the hooks connected and wrote');
    assert.deepEqual(await tab.eval(open), ['t1'], 'two components under StrictMode: one socket');
    assert.equal(await tab.eval(`window.__sockets.length`), 2);
    await tab.eval(`window.__probe('t2')`);
    await tab.wait(`document.getElementById('probe')?.textContent === 't2|true|written with t2'`, 10000, 'the new token connected');
    await tab.wait(`JSON.stringify(${open}) === '["t2"]'`, 5000, 'the t1 socket closed');
    await tab.eval(`window.__probe(null)`);
    await tab.wait(`${open}.length === 0`, 5000, 'unmount closed the last socket');
    await sleep(1000); // a client left open would reconnect within its first backoff step (200 ms)
    assert.deepEqual(await tab.eval(open), []);
    assert.equal(await tab.eval(`window.__sockets.length`), 3, 'no socket reopened');
    assert.equal(await tab.eval(`window.__sockets[0].readyState`), 1, "the example's own client is untouched");
    assert.deepEqual(tab.errors, []);
  } finally {
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

/** Run at every page load of a tab: which build the page and its aether.js came from. */
const RECORD_LOADS = `addEventListener('load', () => {
  const m = /\\(build (\\d+)\\)/.exec((document.querySelector('footer') || {}).textContent || '');
  const loads = JSON.parse(sessionStorage.getItem('shell-loads') || '[]');
  loads.push({ page: m ? Number(m[1]) : 0, client: globalThis.__shellBuild || 0 });
  sessionStorage.setItem('shell-loads', JSON.stringify(loads));
});`;
const BUILD = `[(/\\(build (\\d+)\\)/.exec(document.querySelector('footer').textContent) || [])[1], String(globalThis.__shellBuild)].join('/')`;
const CACHES = `caches.keys().then((k) => k.join(','))`;
/** The URLs in the one shell cache there is. */
const CACHED = `(async () => { const names = await caches.keys(); if (names.length !== 1) return names; return (await (await caches.open(names[0])).keys()).map((r) => new URL(r.url).pathname + new URL(r.url).search).sort(); })()`;
/** A fetch from the page: its status and body, or the error's name. */
const get = (url, init = {}) => `fetch(${JSON.stringify(url)}, ${JSON.stringify(init)}).then(async (r) => r.status + ' ' + (await r.text()).slice(0, 20), (e) => e.name)`;

/** Another window in `tab`'s browser context (the same service worker and caches), on `url`. */
async function sibling(cdp, tab, url, name) {
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId: tab.browserContextId });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  await cdp.send('Runtime.enable', {}, sessionId);
  await cdp.send('Page.enable', {}, sessionId);
  await cdp.send('Page.addScriptToEvaluateOnNewDocument', { source: RECORD_LOADS }, sessionId);
  const page = new Tab(cdp, name, { sessionId, browserContextId: tab.browserContextId, targetId, errors: [] });
  await page.goto(url);
  return page;
}

test('offline shell versions: one version per page load, a new version only once complete and not beside an old window, a failed precache keeps the old, only the shell is cached', { skip, timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-shell-up-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  const site = path.join(dir, 'static');
  fs.cpSync(STATIC, site, { recursive: true, filter: (src) => !src.includes(path.join('demos', 'screenshots')) });
  // An API-like answer on the same origin: the relay serves it like any file, but it is not the shell.
  fs.mkdirSync(path.join(site, 'api'), { recursive: true });
  fs.writeFileSync(path.join(site, 'api', 'me.json'), '{"user":"alice"}');
  const files = {
    kanban: path.join(site, 'demos', 'kanban.html'),
    client: path.join(site, 'aether.js'),
    sw: path.join(site, 'sw.js'),
  };
  const original = Object.fromEntries(Object.entries(files).map(([k, f]) => [k, fs.readFileSync(f, 'utf8')]));
  /** The relay now ships build `n`: the page's footer and aether.js say so; sw.js as given. */
  const ship = (n, { version = null, extra = null } = {}) => {
    assert.ok(original.kanban.includes('Built on aether-actix'));
    fs.writeFileSync(files.kanban, original.kanban.replace('Built on aether-actix', `Built on aether-actix (build ${n})`));
    fs.writeFileSync(files.client, original.client + `\n;globalThis.__shellBuild = ${n};\n`);
    let sw = original.sw;
    if (version) sw = sw.replace(/const VERSION = '[^']*';/, `const VERSION = '${version}';`);
    if (extra) sw = sw.replace('const PRECACHE = [', `const PRECACHE = [\n  ${JSON.stringify(extra)},`);
    fs.writeFileSync(files.sw, sw);
  };
  let relay = null;
  let chromium = null;
  try {
    ship(1, { version: 'build-1' });
    relay = await startRelay(dir, 0, ledger, site);
    const port = relay.port;
    chromium = await launchChromium(dir);
    const tab = await Tab.open(chromium.cdp, null, 'kanban');
    await chromium.cdp.send('Page.addScriptToEvaluateOnNewDocument', { source: RECORD_LOADS }, tab.session);
    await tab.goto(`http://127.0.0.1:${port}/demos/kanban.html`);
    await tab.wait(connected, 10000, 'connected');
    await tab.shellReady('/demos/kanban.html');
    assert.equal(await tab.eval(CACHES), 'aether-shell-build-1');
    assert.deepEqual(await tab.eval(CACHED), [...SHELL.precache].sort());

    // Only the shell: same-origin GETs outside it go to the relay and are never stored.
    assert.equal(await tab.eval(get('/api/me.json?user=alice', { headers: { 'Cache-Control': 'no-store' } })), '200 {"user":"alice"}');
    assert.equal(await tab.eval(get('/api/me.json')), '200 {"user":"alice"}');
    assert.match(await tab.eval(get('/aether.js?user=alice')), /^200 /);
    assert.deepEqual(await tab.eval(CACHED), [...SHELL.precache].sort(), 'nothing cached at run time');

    // Changed files, the same version: the page keeps its whole version (page and client alike).
    ship(2, { version: 'build-1' });
    await tab.reload();
    assert.equal(await tab.eval(FROM_SW), true);
    assert.equal(await tab.eval(BUILD), '1/1');

    // A new version: the old worker serves this load, the new one precaches, takes over, and the
    // page reloads itself once into the new version whole; the old cache goes only then.
    ship(2, { version: 'build-2' });
    await tab.reload();
    await tab.wait(`${BUILD} === '2/2'`, 20000, 'the page reloaded into build 2');
    await tab.wait(`${CACHES}.then((k) => k === 'aether-shell-build-2')`, 15000, 'only the new cache is left');
    assert.deepEqual(await tab.eval(CACHED), [...SHELL.precache].sort());
    await tab.wait(connected, 10000, 'connected again');

    // Two windows: a new version waits (both keep build 2, reloads too) until one is left, then
    // takes over that one, which reloads into it whole.
    const other = await sibling(chromium.cdp, tab, `http://127.0.0.1:${port}/demos/kanban.html`, 'kanban, second window');
    assert.equal(await other.eval(BUILD), '2/2');
    ship(4, { version: 'build-4' });
    await tab.reload();
    await tab.wait(`navigator.serviceWorker.getRegistration().then((r) => !!r.waiting)`, 15000, 'build 4 installed and waiting');
    await sleep(500); // time for a take-over, were it (wrongly) to happen
    assert.equal(await tab.eval(BUILD), '2/2');
    await other.reload();
    assert.equal(await other.eval(BUILD), '2/2', 'the other window keeps the version in charge');
    assert.deepEqual((await tab.eval(CACHES)).split(',').sort(), ['aether-shell-build-2', 'aether-shell-build-4'], 'the old cache stays while it serves');
    assert.deepEqual(await other.eval(`JSON.parse(sessionStorage.getItem('shell-loads')).map((l) => l.page + '/' + l.client).join(' ')`), '2/2 2/2');
    await chromium.cdp.send('Target.closeTarget', { targetId: other.targetId });
    await tab.reload();
    await tab.wait(`${BUILD} === '4/4'`, 20000, 'the lone window reloaded into build 4');
    await tab.wait(`${CACHES}.then((k) => k === 'aether-shell-build-4')`, 15000, 'then the old cache goes');
    await tab.wait(connected, 10000, 'connected again');

    // A new version whose precache fails (a listed file is missing): its install fails, the worker
    // and cache in charge stay, and pages keep loading build 4 whole although the relay has 5.
    ship(5, { version: 'build-5', extra: '/missing-file.js' });
    await tab.reload();
    const attempt = await tab.eval(`(async () => {
      const reg = await navigator.serviceWorker.getRegistration();
      const states = [];
      for (let i = 0; i < 3 && !states.includes('redundant'); i++) {
        await reg.update().catch((e) => states.push('update: ' + e.name));
        const w = reg.installing;
        if (!w) continue;
        states.push(w.state);
        await new Promise((resolve) => {
          const done = () => ['redundant', 'installed', 'activated'].includes(w.state) && resolve();
          w.addEventListener('statechange', () => { states.push(w.state); done(); });
          done();
        });
      }
      return { states, waiting: !!reg.waiting, installing: !!reg.installing, active: reg.active && reg.active.state };
    })()`);
    assert.ok(attempt.states.includes('redundant'), 'the install failed: ' + JSON.stringify(attempt));
    assert.deepEqual([attempt.waiting, attempt.installing, attempt.active], [false, false, 'activated'], JSON.stringify(attempt));
    assert.equal(await tab.eval(CACHES), 'aether-shell-build-4', 'the old cache stays, no half-filled new one');
    assert.deepEqual(await tab.eval(CACHED), [...SHELL.precache].sort());
    await tab.reload();
    assert.equal(await tab.eval(FROM_SW), true);
    assert.equal(await tab.eval(BUILD), '4/4');

    // Offline: the complete build 4 still loads; nothing outside the shell comes from a cache.
    await stopRelay(relay);
    await tab.wait(offline, 10000, 'offline');
    await tab.reload();
    assert.equal(await tab.eval(FROM_SW), true);
    assert.equal(await tab.eval(BUILD), '4/4');
    assert.equal(await tab.eval(`document.querySelectorAll('.col').length`), 3, 'the board from localStorage');
    assert.equal(await tab.eval(get('/api/me.json?user=alice', { headers: { 'Cache-Control': 'no-store' } })), 'TypeError', 'the API answer is not served offline');
    assert.equal(await tab.eval(get('/api/me.json')), 'TypeError');
    assert.equal(await tab.eval(get('/aether.js?user=alice')), 'TypeError', 'a query string is another URL');
    assert.equal(await tab.eval(get('/aether.js', { cache: 'no-store' })), 'TypeError', 'no-store is never answered from a cache');
    assert.match(await tab.eval(get('/aether.js')), /^200 /, 'the shell is');

    // Every load ran one build's page and client, never a mix, and never build 5.
    const loads = await tab.eval(`JSON.parse(sessionStorage.getItem('shell-loads'))`);
    assert.ok(loads.length >= 9, JSON.stringify(loads));
    for (const l of loads) assert.equal(l.page, l.client, 'page and client of one load: ' + JSON.stringify(loads));
    assert.deepEqual([...new Set(loads.map((l) => l.page))], [1, 2, 4], JSON.stringify(loads));
    assert.deepEqual(tab.errors, []);
  } finally {
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

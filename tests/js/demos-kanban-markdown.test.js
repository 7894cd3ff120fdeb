'use strict';
// The kanban and markdown demos (static/demos/) in real Chromium against the real relay: two
// isolated browser contexts (separate storage, no shared BroadcastChannel) sync through the relay,
// concurrent seeding makes one board / one document, offline edits arrive after the relay comes
// back, and stored XSS payloads stay inert. Saves 1280x800 screenshots to static/demos/screenshots/.
// Needs AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH); skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, Aether, MemoryStorage, until, sleep, aetherBin, staticServer } = require('./helpers');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');
// Screenshots go to static/demos/screenshots/ (the ones static/README.md shows) only when
// AETHER_SCREENSHOTS=1, so an ordinary test run leaves the working tree clean; otherwise to a
// temporary directory, still taken and checked.
const SHOTS =
  require('./helpers').screenshotDir(STATIC);

const { loadWs, browserSkip, untilAsync } = require('./helpers');
const WS = loadWs();
const skip = browserSkip(BIN);
const { PageHandle, startRelay, stopRelay, launchChromium, killChromium } = require('./devtools');


/** One tab in its own browser context (own localStorage, no BroadcastChannel with the other). */
class Tab extends PageHandle {
  /** A hard reload: the page comes from the relay, not from a cache. */
  reload() {
    return super.reload({ ignoreCache: true });
  }
  async screenshot(file) {
    const { data } = await this.cdp.send('Page.captureScreenshot', { format: 'png', clip: { x: 0, y: 0, width: 1280, height: 800, scale: 1 } }, this.session);
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, Buffer.from(data, 'base64'));
  }
}

// Page-side snippets.
const KANBAN = {
  columns: `Array.from(document.querySelectorAll('.col')).map((c) => ({ id: c.dataset.col, title: c.querySelector('.col-title').value,
    cards: Array.from(c.querySelectorAll('.card')).map((k) => ({ id: k.dataset.card, title: k.querySelector('textarea').value, prio: k.querySelector('.prio').textContent })) }))`,
  status: `document.getElementById('status').dataset.state + ' | ' + document.querySelector('#status .text').textContent`,
};
/** Adds a card to column `colId` in the page and types `title` into it (then blurs: the save). */
function addCardJs(colId, title) {
  return `(async () => {
    const before = new Set(Array.from(document.querySelectorAll('.card')).map((k) => k.dataset.card));
    document.querySelector('.col[data-col=${JSON.stringify(colId)}] .add-card').click();
    const card = Array.from(document.querySelectorAll('.card')).find((k) => !before.has(k.dataset.card));
    const t = card.querySelector('textarea');
    if (document.activeElement !== t) throw new Error('new card not focused');
    t.value = ${JSON.stringify(title)};
    t.dispatchEvent(new Event('input', { bubbles: true }));
    t.blur();
    return card.dataset.card;
  })()`;
}
/** Drags card `id` with HTML5 drag events onto column `colId`, before card `beforeId` (or the end). */
function dragJs(id, colId, beforeId) {
  return `(async () => {
    const card = document.querySelector('.card[data-card=${JSON.stringify(id)}]');
    const list = document.querySelector('.col[data-col=${JSON.stringify(colId)}] .cards');
    const target = ${beforeId ? `document.querySelector('.card[data-card=${JSON.stringify(beforeId)}]')` : 'null'};
    const lr = list.getBoundingClientRect();
    const y = target ? target.getBoundingClientRect().top + 2 : lr.bottom - 4;
    const x = lr.left + lr.width / 2;
    const dt = new DataTransfer();
    card.dispatchEvent(new DragEvent('dragstart', { bubbles: true, cancelable: true, dataTransfer: dt }));
    list.dispatchEvent(new DragEvent('dragover', { bubbles: true, cancelable: true, dataTransfer: dt, clientX: x, clientY: y }));
    list.dispatchEvent(new DragEvent('drop', { bubbles: true, cancelable: true, dataTransfer: dt, clientX: x, clientY: y }));
    card.dispatchEvent(new DragEvent('dragend', { bubbles: true, dataTransfer: dt }));
    return true;
  })()`;
}
const MD = {
  lines: `Array.from(document.querySelectorAll('#lines .row')).map((r) => r.querySelector('textarea').value)`,
  ids: `Array.from(document.querySelectorAll('#lines .row')).map((r) => r.dataset.line)`,
};
/** Types `text` as the whole content of line `id` (input events; the 60 ms debounce writes it). */
function typeLineJs(id, text) {
  return `(() => {
    const t = document.querySelector('#lines .row[data-line=${JSON.stringify(id)}] textarea');
    t.focus();
    t.value = ${JSON.stringify(text)};
    t.dispatchEvent(new Event('input', { bubbles: true }));
    return true;
  })()`;
}
function keyJs(id, key, caret) {
  return `(() => {
    const t = document.querySelector('#lines .row[data-line=${JSON.stringify(id)}] textarea');
    t.focus();
    t.setSelectionRange(${caret}, ${caret});
    t.dispatchEvent(new KeyboardEvent('keydown', { key: ${JSON.stringify(key)}, bubbles: true, cancelable: true }));
    return true;
  })()`;
}

test('kanban and markdown demos: two browsers, seeding, sync, offline, XSS, screenshots', { skip, timeout: 180000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-demos-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  let relay = await startRelay(dir, 0, ledger);
  const port = relay.port;
  const base = `http://127.0.0.1:${port}`;
  let browser = null;
  let cdp = null;
  let probe = null;
  let mprobe = null;
  try {
    // Each demo lives in its own room: a client in that room sees what the pages wrote.
    probe = new Aether(`ws://127.0.0.1:${port}/ws`, { room: 'kanban', WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    mprobe = new Aether(`ws://127.0.0.1:${port}/ws`, { room: 'markdown', WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => probe.connected && mprobe.connected, 10000, 'probe clients');
    ({ proc: browser, cdp } = await launchChromium(dir));

    // ---------------------------------------------------------------- kanban
    const kUrl = `${base}/demos/kanban.html`;
    // Two fresh tabs open the empty board at the same moment: both seed, one board results.
    const [ka, kb] = await Promise.all([Tab.open(cdp, kUrl, 'kanban A'), Tab.open(cdp, kUrl, 'kanban B')]);
    const threeCols = `(() => { const c = ${KANBAN.columns}; return c.length === 3 && c.map((x) => x.id + '=' + x.title).join(',') === 'todo=To do,doing=In progress,done=Done'; })()`;
    await ka.wait(threeCols, 10000, '3 seed columns');
    await kb.wait(threeCols, 10000, '3 seed columns');
    await until(() => probe.keys().filter((k) => k.startsWith('col:')).length === 3, 5000, 'relay has the seed');
    await sleep(500);
    assert.deepEqual(probe.keys().filter((k) => k.startsWith('col:')).sort(), ['col:doing', 'col:done', 'col:todo']);
    assert.deepEqual(probe.get('col:todo'), { id: 'todo', title: 'To do', order: 1 });
    assert.equal((await ka.eval(KANBAN.columns)).length, 3);
    assert.equal((await kb.eval(KANBAN.columns)).length, 3);
    await ka.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'connected');
    assert.match(await ka.eval(KANBAN.status), /^connected \| connected · 127\.0\.0\.1:\d+$/);

    // Edits in A appear in B: add cards, title, priority.
    const c1 = await ka.eval(addCardJs('todo', 'Write the release notes'));
    const c2 = await ka.eval(addCardJs('todo', 'Review the ledger format'));
    const c3 = await ka.eval(addCardJs('doing', 'Benchmark fan-out'));
    await ka.eval(`document.querySelector('.card[data-card="${c1}"] .prio').click()`); // med -> high
    await ka.eval(`document.querySelector('.card[data-card="${c3}"] .prio').click(); document.querySelector('.card[data-card="${c3}"] .prio').click()`); // -> low
    const cardsIn = (tab, col) => tab.eval(`(${KANBAN.columns}).find((c) => c.id === ${JSON.stringify(col)}).cards.map((k) => k.title + '/' + k.prio).join(', ')`);
    await untilAsync(async () => (await cardsIn(kb, 'todo')) === 'Write the release notes/high, Review the ledger format/med', 10000, 'B sees A\'s cards');
    await untilAsync(async () => (await cardsIn(kb, 'doing')) === 'Benchmark fan-out/low', 10000, 'B sees the doing card');
    assert.equal(probe.get('card:' + c1).title, 'Write the release notes');

    // Drag between columns (B) and reorder within a column (A): one write each.
    await kb.eval(dragJs(c2, 'doing', c3)); // to the top of "In progress"
    await untilAsync(async () => (await cardsIn(ka, 'doing')) === 'Review the ledger format/med, Benchmark fan-out/low', 10000, 'A sees the move');
    await ka.eval(dragJs(c3, 'doing', c2)); // reorder: fan-out back above the review
    await untilAsync(async () => (await cardsIn(kb, 'doing')) === 'Benchmark fan-out/low, Review the ledger format/med', 10000, 'B sees the reorder');
    const c4 = await kb.eval(addCardJs('done', 'Ship protocol v2'));
    await untilAsync(async () => (await cardsIn(ka, 'done')) === 'Ship protocol v2/med', 10000, 'A sees B\'s card');

    // A remote change never clobbers a title being typed: B types into c1 (focused, not saved)
    // while A changes c1's priority and adds a card.
    await kb.eval(`(() => { const t = document.querySelector('.card[data-card="${c1}"] textarea'); t.focus(); t.value = 'half-typed'; t.dispatchEvent(new Event('input', { bubbles: true })); })()`);
    await ka.eval(`document.querySelector('.card[data-card="${c1}"] .prio').click()`); // high -> low
    await kb.wait(`document.querySelector('.card[data-card="${c1}"] .prio').textContent === 'low'`, 10000, 'remote priority');
    await sleep(300);
    assert.equal(await kb.eval(`document.querySelector('.card[data-card="${c1}"] textarea').value`), 'half-typed');
    assert.equal(await kb.eval(`document.activeElement === document.querySelector('.card[data-card="${c1}"] textarea')`), true);
    await kb.eval(`document.activeElement.value = 'Write the release notes'; document.activeElement.blur()`);

    // Rename and delete a column (with its cards); the seed column really goes away.
    await ka.eval(`(() => { const i = document.querySelector('.col[data-col="done"] .col-title'); i.value = 'Shipped'; i.dispatchEvent(new Event('change')); })()`);
    await kb.wait(`document.querySelector('.col[data-col="done"] .col-title').value === 'Shipped'`, 10000, 'rename');
    await ka.eval(`document.querySelector('.add-col').click(); document.activeElement.blur()`);
    await kb.wait(`document.querySelectorAll('.col').length === 4`, 10000, 'new column');
    const tmpCol = await kb.eval(`document.querySelectorAll('.col')[3].dataset.col`);
    await kb.eval(addCardJs(tmpCol, 'goes away with its column'));
    await ka.wait(`document.querySelectorAll('.card').length === 5`, 10000, '5 cards');
    await ka.eval(`window.confirm = () => true; document.querySelector('.col[data-col="${tmpCol}"] .del-col').click()`);
    await kb.wait(`document.querySelectorAll('.col').length === 3 && document.querySelectorAll('.card').length === 4`, 10000, 'column deleted');
    await until(() => !probe.has('col:' + tmpCol) && probe.keys().filter((k) => k.startsWith('card:')).length === 4, 5000, 'relay: column and card gone');
    assert.equal(await kb.eval(`document.getElementById('counts').textContent`), '3 columns · 4 cards');

    await ka.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'settled');
    await sleep(300);
    await ka.screenshot(path.join(SHOTS, 'kanban.png'));

    // Stored XSS stays text.
    const xss = '<img src=x onerror=window.__xss=1>';
    const cx = await ka.eval(addCardJs('todo', xss));
    await kb.wait(`Array.from(document.querySelectorAll('.card textarea')).some((t) => t.value === ${JSON.stringify(xss)})`, 10000, 'B shows the payload as text');
    await ka.eval(`(() => { const i = document.querySelector('.col[data-col="todo"] .col-title'); i.value = ${JSON.stringify(xss)}; i.dispatchEvent(new Event('change')); })()`);
    await kb.wait(`document.querySelector('.col[data-col="todo"] .col-title').value === ${JSON.stringify(xss)}`, 10000, 'payload column title');
    await sleep(300);
    for (const tab of [ka, kb]) {
      assert.equal(await tab.eval('window.__xss'), undefined);
      assert.equal(await tab.eval(`document.querySelectorAll('#board img').length`), 0);
    }
    await ka.eval(`document.querySelector('.card[data-card="${cx}"] .del-card').click()`);
    await ka.eval(`(() => { const i = document.querySelector('.col[data-col="todo"] .col-title'); i.value = 'To do'; i.dispatchEvent(new Event('change')); })()`);

    // Offline: the relay dies, A keeps working, the edit reaches B after the relay is back.
    await stopRelay(relay);
    await ka.wait(`document.getElementById('status').dataset.state === 'offline'`, 10000, 'offline status');
    const co = await ka.eval(addCardJs('todo', 'written while offline'));
    assert.match(await ka.eval(KANBAN.status), /^offline \| offline · [1-9]\d* changes? waiting$/);
    relay = await startRelay(dir, port, ledger);
    await kb.wait(`Array.from(document.querySelectorAll('.card textarea')).some((t) => t.value === 'written while offline')`, 20000, 'B gets the offline card');
    await ka.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'A reconnected, nothing waiting');
    await until(() => probe.get('card:' + co) && probe.get('card:' + co).title === 'written while offline', 15000, 'relay has the offline card');
    assert.deepEqual(ka.errors, []);
    assert.deepEqual(kb.errors, []);

    // ---------------------------------------------------------------- markdown
    const mUrl = `${base}/demos/markdown.html`;
    const [ma, mb] = await Promise.all([Tab.open(cdp, mUrl, 'markdown A'), Tab.open(cdp, mUrl, 'markdown B')]);
    await ma.wait(`(${MD.lines}).length === 18`, 10000, '18 seed lines');
    await mb.wait(`(${MD.lines}).length === 18`, 10000, '18 seed lines');
    await sleep(500);
    assert.equal(mprobe.keys().filter((k) => k.startsWith('line:')).length, 18, 'one copy of the seed');
    assert.deepEqual(await ma.eval(MD.lines), await mb.eval(MD.lines));
    assert.equal(await ma.eval(`document.querySelector('#preview h1').textContent`), 'aether-actix');
    assert.equal(await ma.eval(`document.querySelectorAll('#preview ul li').length`), 3);
    assert.equal(await ma.eval(`document.querySelector('#preview pre code').textContent.split('\\n').length`), 2);
    assert.equal(await ma.eval(`document.querySelector('#preview blockquote em').textContent`), 'Your variables are the database.');

    // An edit in A shows in B's editor and preview.
    await ma.eval(typeLineJs('seed-03', 'A **shared** Markdown editor with `inline code` and [a link](https://example.com/x?a=1&b=2).'));
    await mb.wait(`document.querySelector('#lines .row[data-line="seed-03"] textarea').value.startsWith('A **shared**')`, 10000, 'B sees the edit');
    await mb.wait(`document.querySelector('#preview strong') && document.querySelector('#preview strong').textContent === 'shared'`, 10000, 'B preview');
    assert.equal(await mb.eval(`document.querySelector('#preview a').getAttribute('href')`), 'https://example.com/x?a=1&b=2');
    assert.equal(await mb.eval(`document.querySelector('#preview a').rel`), 'noopener noreferrer');

    // Enter splits/inserts after, Backspace on an empty line deletes it, move down.
    await ma.eval(keyJs('seed-11', 'Enter', '## How it works'.length));
    await ma.wait(`(${MD.lines}).length === 19 && (${MD.lines})[11] === ''`, 5000, 'Enter inserted a line');
    const newId = await ma.eval(`(${MD.ids})[11]`);
    assert.equal(await ma.eval(`document.activeElement === document.querySelector('#lines .row[data-line="${newId}"] textarea')`), true);
    await mb.wait(`(${MD.lines}).length === 19 && (${MD.lines})[11] === ''`, 10000, 'B sees the inserted line');
    await ma.eval(keyJs(newId, 'Backspace', 0));
    await mb.wait(`(${MD.lines}).length === 18`, 10000, 'B sees the line deleted');
    await mb.eval(`document.querySelector('#lines .row[data-line="seed-05"] .down').click()`);
    await ma.wait(`(${MD.ids}).slice(4, 6).join() === 'seed-06,seed-05'`, 10000, 'A sees the move');

    // Concurrent inserts at the same place from both tabs: both lines survive (no order array).
    await Promise.all([
      ma.eval(`(() => { const id = window.markdownDemo.insertAfter('seed-01', 'from A'); return id; })()`),
      mb.eval(`(() => { const id = window.markdownDemo.insertAfter('seed-01', 'from B'); return id; })()`),
    ]);
    const bothIn = `(() => { const l = ${MD.lines}; return l.length === 20 && l.includes('from A') && l.includes('from B') && l.indexOf('from A') < 3 && l.indexOf('from B') < 3; })()`;
    await ma.wait(bothIn, 10000, 'both inserted lines in A');
    await mb.wait(bothIn, 10000, 'both inserted lines in B');
    assert.deepEqual(await ma.eval(MD.lines), await mb.eval(MD.lines));
    for (const id of await ma.eval(`(${MD.ids}).filter((id, i) => i > 0 && i < 3)`)) await ma.eval(`document.querySelector('#lines .row[data-line="${id}"] .del').click()`);
    await mb.wait(`(${MD.lines}).length === 18`, 10000, 'cleaned up');

    // Presence: each tab sees the other in the peers bar.
    await ma.wait(`document.getElementById('peers').textContent.includes('1 other')`, 10000, 'peer in A');
    await mb.wait(`document.getElementById('peers').textContent.includes('1 other')`, 10000, 'peer in B');
    assert.equal(await ma.eval(`document.querySelectorAll('#peers .pdot').length`), 2);

    // A peer's change never replaces a line being typed in; both tabs agree after the blur.
    await mb.eval(typeLineJs('seed-12', 'B is typing here'));
    await sleep(150);
    await ma.eval(`window.aether.set('line:seed-12', { id: 'seed-12', text: 'A wrote this', pos: window.aether.get('line:seed-12').pos })`);
    await until(() => (mprobe.get('line:seed-12') || {}).text === 'A wrote this', 5000, 'relay has A\'s line');
    await sleep(300);
    assert.equal(await mb.eval(`document.querySelector('#lines .row[data-line="seed-12"] textarea').value`), 'B is typing here');
    assert.equal(await mb.eval(`document.activeElement === document.querySelector('#lines .row[data-line="seed-12"] textarea')`), true);
    await mb.eval(`document.activeElement.blur()`);
    await mb.wait(`document.querySelector('#lines .row[data-line="seed-12"] textarea').value === 'A wrote this'`, 5000, 'B catches up after blur');
    await ma.eval(typeLineJs('seed-12', ''));
    await mb.wait(`document.querySelector('#lines .row[data-line="seed-12"] textarea').value === ''`, 5000, 'line 12 empty again');

    await ma.eval(`document.querySelector('#lines .row[data-line="seed-05"] .up').click()`);
    await mb.wait(`(${MD.ids}).slice(4, 6).join() === 'seed-05,seed-06'`, 10000, 'B sees the move back');
    await ma.eval(`document.activeElement && document.activeElement.blur()`);
    await mb.eval(`document.activeElement && document.activeElement.blur()`);
    await ma.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'settled');
    await sleep(300);
    await ma.screenshot(path.join(SHOTS, 'markdown.png'));

    // XSS: javascript:/data:/vbscript: links stay text; raw HTML stays text.
    const payload = '[x](javascript:window.__xss=1) [y](JaVaScRiPt:window.__xss=1) [z](data:text/html,<b>x</b>) [v](vbscript:msgbox) <img src=x onerror=window.__xss=1> [ok](mailto:a@example.com)';
    await ma.eval(typeLineJs('seed-18', payload));
    await mb.wait(`document.querySelector('#lines .row[data-line="seed-18"] textarea').value === ${JSON.stringify(payload)}`, 10000, 'B has the payload');
    await sleep(300);
    for (const tab of [ma, mb]) {
      const links = await tab.eval(`Array.from(document.querySelectorAll('#preview a')).map((a) => a.getAttribute('href'))`);
      assert.deepEqual(links, ['https://example.com/x?a=1&b=2', 'mailto:a@example.com']);
      assert.equal(await tab.eval(`document.querySelectorAll('#preview img, #preview script, #preview [onerror]').length`), 0);
      assert.match(await tab.eval(`document.getElementById('preview').textContent`), /\[x\]\(javascript:window\.__xss=1\)/);
      await tab.eval(`window.confirm = () => true; Array.from(document.querySelectorAll('#preview a[href^="mailto"]')).forEach((a) => a.addEventListener('click', (e) => e.preventDefault()))`);
      await sleep(200);
      assert.equal(await tab.eval('window.__xss'), undefined);
    }
    // (The body: the page's own <head> declares its icon as a data: URL, which is not user content.)
    assert.equal(await mb.eval(`Array.from(document.body.querySelectorAll('[href]')).some((e) => /^\\s*(javascript|data|vbscript):/i.test(e.getAttribute('href')))`), false);

    // Offline edit reaches the relay and B after the relay is back, without a reload.
    await stopRelay(relay);
    await ma.wait(`document.getElementById('status').dataset.state === 'offline'`, 10000, 'offline status');
    await ma.eval(typeLineJs('seed-01', '# aether-actix (edited offline)'));
    await ma.wait(`/waiting$/.test(document.querySelector('#status .text').textContent)`, 5000, 'changes waiting');
    relay = await startRelay(dir, port, ledger);
    await mb.wait(`document.querySelector('#lines .row[data-line="seed-01"] textarea').value === '# aether-actix (edited offline)'`, 20000, 'B gets the offline edit');
    await mb.wait(`document.querySelector('#preview h1').textContent === 'aether-actix (edited offline)'`, 5000, 'B preview');
    await until(() => (mprobe.get('line:seed-01') || {}).text === '# aether-actix (edited offline)', 15000, 'relay has the offline edit');
    assert.deepEqual(ma.errors, []);
    assert.deepEqual(mb.errors, []);
  } finally {
    if (probe) probe.close();
    if (mprobe) mprobe.close();
    if (cdp) cdp.close();
    if (browser && browser.exitCode === null) {
      try {
        process.kill(-browser.pid, 'SIGKILL');
      } catch {
        browser.kill('SIGKILL');
      }
    }
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});


/** What a client that connects now to `room` gets from the relay for `key` (a fresh Node client, no cache). */
async function relayValue(port, key, room) {
  const fresh = new Aether(`ws://127.0.0.1:${port}/ws`, { room, WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
  try {
    await until(() => fresh.connected && fresh.isReady, 10000, 'fresh client snapshot');
    return fresh.get(key);
  } finally {
    fresh.close();
  }
}

test('kanban and markdown demos: an edit made offline survives a reload and reaches the relay after reconnect', { skip, timeout: 180000 }, async () => {
  // The pages come from a separate static server, so page A can reload while the relay is down;
  // `?relay=` points them at the relay.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-demos-reload-'));
  const ledger = path.join(dir, 'ledger.jsonl');
  let relay = null;
  let web = null;
  let chromium = null;
  try {
    relay = await startRelay(dir, 0, ledger);
    const port = relay.port;
    web = await staticServer(STATIC);
    chromium = await launchChromium(dir);
    const { cdp } = chromium;
    const relayParam = '?relay=' + encodeURIComponent(`ws://127.0.0.1:${port}/ws`);
    const connected = `document.getElementById('status').dataset.state === 'connected'`;
    const offline = `document.getElementById('status').dataset.state === 'offline'`;
    const waiting = `/^offline · [1-9]\\d* changes? waiting$/.test(document.querySelector('#status .text').textContent)`;

    // ---------------------------------------------------------------- kanban
    const kUrl = `${web.url}/demos/kanban.html${relayParam}`;
    const [ka, kb] = await Promise.all([Tab.open(cdp, kUrl, 'kanban A'), Tab.open(cdp, kUrl, 'kanban B')]);
    for (const tab of [ka, kb]) {
      await tab.wait(`(${KANBAN.columns}).length === 3`, 10000, '3 seed columns');
      await tab.wait(connected, 10000, 'connected');
    }
    assert.match(await ka.eval(KANBAN.status), new RegExp(`^connected \\| connected · 127\\.0\\.0\\.1:${port}$`), 'the page talks to the relay, not to its own origin');
    const titles = (tab) => tab.eval(`Array.from(document.querySelectorAll('.card textarea')).map((t) => t.value).sort().join(' | ')`);
    const renamed = await ka.eval(addCardJs('todo', 'to be renamed offline'));
    await untilAsync(async () => (await titles(kb)) === 'to be renamed offline', 10000, 'B sees the online card');
    await ka.wait(connected, 10000, 'A settled');

    await stopRelay(relay);
    await ka.wait(offline, 10000, 'A offline');
    await kb.wait(offline, 10000, 'B offline');
    const added = await ka.eval(addCardJs('doing', 'added offline, survives a reload'));
    await ka.eval(`(() => {
      const t = document.querySelector('.card[data-card=${JSON.stringify(renamed)}] textarea');
      t.focus();
      t.value = 'renamed offline';
      t.dispatchEvent(new Event('input', { bubbles: true }));
      t.blur();
    })()`);
    await ka.wait(waiting, 5000, 'A: changes waiting');
    const want = 'added offline, survives a reload | renamed offline';
    assert.equal(await titles(ka), want);

    await ka.reload();
    await ka.wait(`(${KANBAN.columns}).length === 3`, 10000, 'board from the cache after the reload');
    assert.equal(await titles(ka), want, 'both offline edits shown after the reload');
    assert.equal(await ka.eval(`document.querySelector('.card[data-card=${JSON.stringify(added)}]').closest('.col').dataset.col`), 'doing');
    await ka.wait(waiting, 5000, 'A still has changes waiting after the reload');
    assert.ok((await ka.eval('aether.pendingWrites()')) >= 2, 'the outbox survived the reload');
    assert.equal(await titles(kb), 'to be renamed offline', 'B saw nothing yet');

    relay = await startRelay(dir, port, ledger);
    await untilAsync(async () => (await titles(kb)) === want, 20000, 'B gets both offline edits');
    await ka.wait(connected, 20000, 'A reconnected, nothing waiting');
    assert.equal(await ka.eval('aether.pendingWrites()'), 0);
    assert.equal((await relayValue(port, 'card:' + added, 'kanban') || {}).title, 'added offline, survives a reload', 'relay has the added card');
    assert.equal((await relayValue(port, 'card:' + renamed, 'kanban') || {}).title, 'renamed offline', 'relay has the rename');
    assert.equal(await titles(ka), want);
    assert.deepEqual(ka.errors, []);
    assert.deepEqual(kb.errors, []);

    // ---------------------------------------------------------------- markdown
    const mUrl = `${web.url}/demos/markdown.html${relayParam}`;
    const [ma, mb] = await Promise.all([Tab.open(cdp, mUrl, 'markdown A'), Tab.open(cdp, mUrl, 'markdown B')]);
    for (const tab of [ma, mb]) {
      await tab.wait(`(${MD.lines}).length === 18`, 10000, '18 seed lines');
      await tab.wait(connected, 10000, 'connected');
    }
    const line = (id) => `document.querySelector('#lines .row[data-line=${JSON.stringify(id)}] textarea').value`;
    const seed03 = await mb.eval(line('seed-03'));
    assert.deepEqual(await ma.eval(MD.lines), await mb.eval(MD.lines));

    await stopRelay(relay);
    await ma.wait(offline, 10000, 'A offline');
    await mb.wait(offline, 10000, 'B offline');
    const text = 'Edited **offline**; this line survives a reload.';
    await ma.eval(typeLineJs('seed-03', text));
    await ma.wait(waiting, 5000, 'A: changes waiting');
    await ma.eval(`document.activeElement && document.activeElement.blur()`);

    await ma.reload();
    await ma.wait(`(${MD.lines}).length === 18`, 10000, 'document from the cache after the reload');
    assert.equal(await ma.eval(line('seed-03')), text, 'the offline edit shown after the reload');
    await ma.wait(`document.querySelector('#preview strong') && document.querySelector('#preview strong').textContent === 'offline'`, 5000, 'A preview after the reload');
    await ma.wait(waiting, 5000, 'A still has changes waiting after the reload');
    assert.equal(await mb.eval(line('seed-03')), seed03, 'B saw nothing yet');

    relay = await startRelay(dir, port, ledger);
    await mb.wait(`${line('seed-03')} === ${JSON.stringify(text)}`, 20000, 'B gets the offline edit');
    await mb.wait(`document.querySelector('#preview strong') && document.querySelector('#preview strong').textContent === 'offline'`, 5000, 'B preview');
    await ma.wait(connected, 20000, 'A reconnected, nothing waiting');
    assert.equal((await relayValue(port, 'line:seed-03', 'markdown') || {}).text, text, 'relay has the offline edit');
    assert.deepEqual(await ma.eval(MD.lines), await mb.eval(MD.lines));
    assert.deepEqual(ma.errors, []);
    assert.deepEqual(mb.errors, []);
  } finally {
    if (chromium) {
      chromium.cdp.close();
      killChromium(chromium.proc);
    }
    if (web) await web.close();
    if (relay) await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

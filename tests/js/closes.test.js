'use strict';
// Chromium's closing handshake with the real relay (issue 15, item 1): `onclose` fires within 50 ms
// of `close()` (the median of 5; none past 250 ms), drained or with megabytes still queued for the
// page, and as soon as the relay's own close (1009 for an oversized message) is answered. Before the relay hung up first, Chromium
// waited for it 0.8-1.0 s in every close. Needs AETHER_BIN and Chromium; skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, until, aetherBin, findChromium, loadWs } = require('./helpers');

const BIN = aetherBin();
const CHROMIUM = findChromium();
const WS = loadWs();
const skip = !BIN ? 'AETHER_BIN is not set' : !CHROMIUM ? 'no Chromium' : !WS ? 'npm install (ws) first' : false;
const { PageHandle, startRelay, stopRelay, launchChromium, closeChromium } = skip ? {} : require('./devtools');

/** Runs in the page: opens `n` sockets in turn, each closed as `how` says; resolves their timings. */
const measure = (url, n, how) => `(async () => {
  const runs = [];
  for (let i = 0; i < ${n}; i++) {
    const ws = new WebSocket(${JSON.stringify(url)});
    await new Promise((resolve, reject) => { ws.onmessage = resolve; ws.onerror = () => reject(new Error('socket error')); });
    const started = performance.now();
    const closed = new Promise((resolve) => { ws.onclose = (e) => resolve({ ms: performance.now() - started, code: e.code, clean: e.wasClean }); });
    if (${JSON.stringify(how)} === 'close') ws.close(); else ws.send('x'.repeat(300 * 1024));
    runs.push(await Promise.race([closed, new Promise((r) => setTimeout(() => r({ ms: 5000, code: 0 }), 5000))]));
  }
  return runs;
})()`;

/** Writes about `mb` megabytes to the relay from Node, so every new socket has them queued. */
async function fill(port, mb) {
  const ws = new WS(`ws://127.0.0.1:${port}/ws?v=2`);
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const count = Math.ceil((mb * 1e6) / 30000);
  const acked = new Promise((resolve) => ws.on('message', (data) => {
    const msg = JSON.parse(String(data));
    if (msg.type === 'ack' && msg.ref === `w${count - 1}`) resolve();
  }));
  for (let i = 0; i < count; i++) ws.send(JSON.stringify({ type: 'set', key: `big/${i}`, value: 'x'.repeat(30000), ref: `w${i}` }));
  await Promise.race([acked, new Promise((_, reject) => setTimeout(() => reject(new Error('writes not acknowledged')), 20000))]);
  ws.close();
}

test('Chromium: onclose within 50 ms of close(), drained or with megabytes queued, and after the relay closes', { skip, timeout: 120000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-closes-'));
  let relay = null;
  let chromium = null;
  try {
    relay = await startRelay(dir, 0, path.join(dir, 'l.jsonl'), undefined, '[limits]\nmessages_burst = 10000\nmessages_per_second = 10000.0\n');
    chromium = await launchChromium(dir);
    const page = await PageHandle.open(chromium.cdp, null, 'page');
    await chromium.cdp.send('Page.navigate', { url: `http://127.0.0.1:${relay.port}/healthz` }, page.session);
    await page.wait('document.readyState === "complete"', 15000, 'healthz page');
    const url = `ws://127.0.0.1:${relay.port}/ws`;
    const report = {};
    // Every close is clean with its code; the median within 50 ms, and none near the 0.8-1.0 s
    // the old relay made every close wait (one run on a loaded 2-core CI machine took 82 ms).
    const check = (name, runs, code) => {
      report[name] = runs.map((r) => Math.round(r.ms * 10) / 10);
      for (const r of runs) {
        assert.equal(r.code, code, `${name}: ${JSON.stringify(runs)}`);
        assert.ok(r.clean, `${name}: a clean close: ${JSON.stringify(runs)}`);
        assert.ok(r.ms < 250, `${name}: onclose ${r.ms.toFixed(1)} ms after: ${JSON.stringify(runs)}`);
      }
      const sorted = runs.map((r) => r.ms).sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)];
      assert.ok(median < 50, `${name}: median onclose ${median.toFixed(1)} ms after: ${JSON.stringify(runs)}`);
    };
    check('close', await page.eval(measure(url, 5, 'close')), 1000);
    check('relay closes (1009)', await page.eval(measure(url, 5, 'oversized')), 1009);
    await fill(relay.port, 6);
    check('close, 6 MB queued', await page.eval(measure(url, 5, 'close')), 1000);
    console.log('onclose after close(), ms:', JSON.stringify(report));
  } finally {
    closeChromium(chromium);
    await stopRelay(relay);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

'use strict';
// Federation ("mesh") in real browsers: two real relays A and B, B dialling A's peer listener, and
// the topology demo (static/index.html) open on each in headless Chromium. A device added or moved
// on one relay's page shows on the other's; the cursor of a page on A shows on B's page, and leaves
// it when that page closes, and again (promptly, not by the page's 8 s expiry) when A's relay
// process is killed with SIGKILL.
// Each page is in its own browser context and the two pages have different origins, so nothing
// reaches the other page through localStorage or BroadcastChannel: only through the two relays.
// Needs AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH); skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { test, aetherBin, browserSkip, untilAsync } = require('./helpers');
const { PageHandle, startRelay, stopRelay, launchChromium, closeChromium } = require('./devtools');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');
const skip = browserSkip(BIN);

/** One page in its own browser context, over the shared DevTools connection. */
class Page extends PageHandle {
  constructor(cdp, name, opened) {
    super(cdp, name, opened);
    this.closed = false;
  }
  static async open(cdp, url, name) {
    const page = await super.open(cdp, url, name);
    await page.wait(`document.getElementById('status').dataset.state === 'connected'`, 10000, 'connected pill');
    return page;
  }
  mouse(type, x, y, extra = {}) {
    return this.cdp.send('Input.dispatchMouseEvent', Object.assign({ type, x, y, button: type === 'mouseMoved' ? 'none' : 'left', clickCount: 1 }, extra), this.session);
  }
  /** Moves the mouse over the canvas until `other` shows this page's cursor (the relays carry it). */
  async showCursorIn(other, ms = 5000) {
    const id = await this.eval('aether.cursorId');
    assert.ok(id, this.name + ' has a client id');
    let i = 0;
    await untilAsync(async () => {
      i++;
      await this.mouse('mouseMoved', 560 + (i % 20) * 7, 420 + (i % 20) * 3);
      return other.eval(`!!document.querySelector('[data-cursor="${id}"]:not([data-leaving])')`);
    }, ms, `${this.name}'s cursor in ${other.name}`);
    return id;
  }
  /** Closes the tab (its WebSocket goes with it) and its browser context. */
  async close() {
    if (this.closed) return;
    this.closed = true;
    await this.cdp.send('Target.closeTarget', { targetId: this.targetId }).catch(() => {});
    await this.cdp.send('Target.disposeBrowserContext', { browserContextId: this.browserContextId }).catch(() => {});
  }
}

/** The relay's /healthz JSON. */
async function health(relay) {
  const res = await fetch(`http://127.0.0.1:${relay.port}/healthz`);
  return res.json();
}
/** Resolves when `relay`'s /healthz shows peer `node` with `connected`. */
function peerState(relay, node, connected, ms, what) {
  return untilAsync(async () => {
    const h = await health(relay);
    const peer = ((h.mesh && h.mesh.peers) || []).find((p) => p.node === node);
    return !!peer && peer.connected === connected && h;
  }, ms, what);
}

const nodeCentre = (id) => `(() => { const r = document.querySelector('[data-node="${id}"] .chip').getBoundingClientRect(); return { x: Math.round(r.left + r.width / 2), y: Math.round(r.top + r.height / 2) }; })()`;
const nodeLeftTop = (id) => `(() => { const e = document.querySelector('[data-node="${id}"]'); return e ? [parseFloat(e.style.left), parseFloat(e.style.top)] : null; })()`;
const selectedNode = (not = '') => `(() => { const s = document.querySelector('.node.sel'); return !!s && s.dataset.node !== ${JSON.stringify(not)} && s.dataset.node; })()`;
/** A real drag of node `id` by (dx, dy) through the input pipeline. */
async function drag(page, id, dx, dy) {
  const c = await page.eval(nodeCentre(id));
  await page.mouse('mousePressed', c.x, c.y, { buttons: 1 });
  for (let i = 1; i <= 10; i++) await page.mouse('mouseMoved', c.x + (dx * i) / 10, c.y + (dy * i) / 10, { button: 'left', buttons: 1 });
  await page.mouse('mouseReleased', c.x + dx, c.y + dy, { buttons: 0 });
}

test('mesh: two relays, the topology demo on each: writes and cursors cross, cursors leave', { skip, timeout: 120000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-mesh-js-'));
  fs.mkdirSync(path.join(dir, 'a'));
  fs.mkdirSync(path.join(dir, 'b'));
  let relayA = null;
  let relayB = null;
  let chromium = null;
  try {
    relayA = await startRelay(path.join(dir, 'a'), 0, path.join(dir, 'a', 'l.jsonl'), STATIC, '[mesh]\nnode_id = "node-a"\nbind = "127.0.0.1:0"\n');
    assert.match(String(relayA.mesh), /^127\.0\.0\.1:\d+$/, 'A logs its peer listener');
    relayB = await startRelay(
      path.join(dir, 'b'), 0, path.join(dir, 'b', 'l.jsonl'), STATIC,
      `[mesh]\nnode_id = "node-b"\nbind = "127.0.0.1:0"\npeers = [${JSON.stringify('ws://' + relayA.mesh)}]\nredial_min_s = 0.05\nredial_max_s = 0.5\n`,
    );
    chromium = await launchChromium(dir);
    let pa = null;
    let pb = null;

    await t.test('B dials A; both /healthz show the peer connected', async () => {
      const ha = await peerState(relayA, 'node-b', true, 10000, 'A sees node-b connected');
      const hb = await peerState(relayB, 'node-a', true, 10000, 'B sees node-a connected');
      assert.equal(ha.mesh.node, 'node-a');
      assert.equal(hb.mesh.node, 'node-b');
    });

    await t.test('the demo on A and on B, each talking to its own relay', async () => {
      pa = await Page.open(chromium.cdp, `http://127.0.0.1:${relayA.port}/`, 'page A');
      pb = await Page.open(chromium.cdp, `http://127.0.0.1:${relayB.port}/`, 'page B');
      assert.equal(await pa.eval('new URL(aether.url).port'), String(relayA.port));
      assert.equal(await pb.eval('new URL(aether.url).port'), String(relayB.port));
      assert.equal(await pb.eval(`document.querySelectorAll('[data-node]').length`), 0, 'fresh ledgers: an empty canvas');
    });

    await t.test('a device added and dragged on A shows on B, and the other way round', async () => {
      // A -> B: add a router with the palette, then drag it.
      await pa.eval(`document.querySelector('[data-add="router"]').click()`);
      const r = await pa.wait(selectedNode(), 5000, 'new router selected');
      await pb.wait(`!!document.querySelector('[data-node="${r}"]')`, 5000, 'router from A');
      assert.equal(await pb.eval(`document.querySelector('[data-node="${r}"] .name').textContent`), 'Edge Router');
      const start = await pa.eval(`aether.get('node:${r}:coords')`);
      await drag(pa, r, 120, 60);
      const moved = { x: start.x + 120, y: start.y + 60 };
      await pa.wait(`JSON.stringify(aether.get('node:${r}:coords')) === '${JSON.stringify(moved)}'`, 3000, 'drag written on A');
      await pb.wait(`JSON.stringify(${nodeLeftTop(r)}) === '${JSON.stringify([moved.x, moved.y])}'`, 5000, 'router moved on B');

      // B -> A: add a server on B, drag A's router on B.
      await pb.eval(`document.querySelector('[data-add="server"]').click()`);
      const s = await pb.wait(selectedNode(r), 5000, 'new server selected');
      await pa.wait(`!!document.querySelector('[data-node="${s}"]')`, 5000, 'server from B');
      assert.equal(await pa.eval(`document.querySelector('[data-node="${s}"] .name').textContent`), 'App Server');
      await drag(pb, r, -80, 40);
      const back = { x: moved.x - 80, y: moved.y + 40 };
      await pb.wait(`JSON.stringify(aether.get('node:${r}:coords')) === '${JSON.stringify(back)}'`, 3000, 'drag written on B');
      await pa.wait(`JSON.stringify(${nodeLeftTop(r)}) === '${JSON.stringify([back.x, back.y])}'`, 5000, 'router moved on A');
      for (const p of [pa, pb]) await p.wait(`document.getElementById('counts').textContent === '2 devices · 0 links'`, 3000, 'counts');

      // Both relays hold the same state (and each write is in both ledgers' registers).
      await untilAsync(async () => (await health(relayA)).fingerprint === (await health(relayB)).fingerprint, 5000, 'same fingerprint on A and B');
      const [ha, hb] = [await health(relayA), await health(relayB)];
      assert.equal(ha.keys, 6, 'three keys per device on A');
      assert.equal(hb.keys, 6, 'three keys per device on B');
    });

    await t.test("the cursor of a page on A shows on B's page (and B's on A's)", async () => {
      const aid = await pa.showCursorIn(pb);
      assert.equal(await pb.eval(`document.querySelector('[data-cursor="${aid}"] span').textContent`), 'peer ' + aid.slice(0, 4));
      const bid = await pb.showCursorIn(pa);
      assert.notEqual(aid, bid);
      // Each page shows only the other's cursor: its own does not come back to it over the mesh.
      assert.deepEqual(await pa.eval(`Array.from(document.querySelectorAll('[data-cursor]'), (e) => e.dataset.cursor)`), [bid]);
      assert.deepEqual(await pb.eval(`Array.from(document.querySelectorAll('[data-cursor]'), (e) => e.dataset.cursor)`), [aid]);
    });

    // Records, in page B, every presence-leave its relay sends it (so a cursor that leaves is known
    // to have been taken away by the relays, not by the page's own 8 s expiry).
    await pb.eval(`window.__left = []; aether.onPresenceLeave((id) => __left.push(id)); true`);

    await t.test("closing the page on A takes its cursor off B's page", async () => {
      const aid = await pa.showCursorIn(pb);
      const t0 = Date.now();
      await pa.close();
      await pb.wait(`!document.querySelector('[data-cursor="${aid}"]')`, 5000, "A's cursor gone after its page closed");
      const took = Date.now() - t0;
      assert.ok((await pb.eval('__left')).includes(aid), 'B got a presence-leave for it');
      t.diagnostic(`cursor left B ${took} ms after page A closed`);
    });

    await t.test("SIGKILL of A's relay takes the cursor of its page off B's page within 5 s", async () => {
      pa = await Page.open(chromium.cdp, `http://127.0.0.1:${relayA.port}/`, 'page A2');
      await pa.wait(`document.querySelectorAll('[data-node]').length === 2`, 5000, 'A2 loads the state');
      const aid = await pa.showCursorIn(pb);
      await pb.eval(`__left = []; true`);
      const t0 = Date.now();
      await stopRelay(relayA); // SIGKILL
      assert.equal(relayA.proc.signalCode, 'SIGKILL', 'relay A was killed');
      await pb.wait(`!document.querySelector('[data-cursor="${aid}"]')`, 5000, "A's cursor gone after A's relay was killed");
      const took = Date.now() - t0;
      assert.ok((await pb.eval('__left')).includes(aid), 'B got a presence-leave for it (not the page expiry)');
      t.diagnostic(`cursor left B ${took} ms after SIGKILL of relay A`);
      await peerState(relayB, 'node-a', false, 5000, 'B sees node-a disconnected');
      // B and its page carry on: connected, with the whole state.
      assert.equal(await pb.eval(`document.getElementById('status').dataset.state`), 'connected');
      assert.equal(await pb.eval(`document.getElementById('counts').textContent`), '2 devices · 0 links');
      await pa.wait(`document.getElementById('status').dataset.state === 'offline'`, 10000, 'page A2 offline');
      assert.deepEqual(pb.errors, [], 'no uncaught exceptions or console errors in page B');
    });
  } finally {
    closeChromium(chromium);
    await stopRelay(relayA);
    await stopRelay(relayB);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

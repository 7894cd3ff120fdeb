'use strict';
// Shared by the browser tests that drive Chromium over the DevTools protocol: the protocol client,
// opening a page in its own browser context, launching and killing headless Chromium, and starting
// and stopping the real relay.

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { until, untilAsync, sleep, aetherBin, findChromium, loadWs } = require('./helpers');

const BIN = aetherBin();
const CHROMIUM = findChromium();
const WS = loadWs();
const STATIC = path.join(__dirname, '..', '..', 'static');

/** A minimal Chrome DevTools Protocol client over one browser-level WebSocket (flat sessions). */
class CDP {
  static async connect(url) {
    const cdp = new CDP(new WS(url, { perMessageDeflate: false }));
    await new Promise((resolve, reject) => {
      cdp.ws.once('open', resolve);
      cdp.ws.once('error', reject);
    });
    return cdp;
  }
  constructor(ws) {
    this.ws = ws;
    this.id = 0;
    this.calls = new Map();
    this.listeners = [];
    ws.on('message', (data) => {
      const msg = JSON.parse(String(data));
      if (msg.id !== undefined && this.calls.has(msg.id)) {
        const { resolve, reject, method } = this.calls.get(msg.id);
        this.calls.delete(msg.id);
        if (msg.error) reject(new Error(method + ': ' + msg.error.message));
        else resolve(msg.result);
      } else if (msg.method) {
        for (const l of this.listeners) l(msg);
      }
    });
    ws.on('close', () => {
      for (const { reject } of this.calls.values()) reject(new Error('devtools connection closed'));
      this.calls.clear();
    });
  }
  send(method, params = {}, sessionId) {
    const id = ++this.id;
    const frame = { id, method, params };
    if (sessionId) frame.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject, method });
      this.ws.send(JSON.stringify(frame));
      setTimeout(() => {
        if (this.calls.delete(id)) reject(new Error(method + ': no answer in 20 s'));
      }, 20000).unref();
    });
  }
  close() {
    this.ws.close();
  }
}

/**
 * Opens a blank page in a new browser context (its own storage, caches, service workers and
 * BroadcastChannel, so two pages only meet through the relay), attached as a flat session on `cdp`,
 * with a `width`x`height` viewport and focus emulation (each page acts as the focused one although
 * several share the browser, so focus and blur behave: the kanban demo saves a card on blur).
 * Resolves {sessionId, browserContextId, targetId, errors}: `errors` is a live array of the page's
 * uncaught exceptions and console.error lines, listened for before Runtime.enable so nothing the
 * page reports early is missed.
 */
async function openPage(cdp, { width = 1280, height = 800 } = {}) {
  const { browserContextId } = await cdp.send('Target.createBrowserContext', { disposeOnDetach: true });
  const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank', browserContextId });
  const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
  const errors = [];
  cdp.listeners.push((msg) => {
    if (msg.sessionId !== sessionId) return;
    if (msg.method === 'Runtime.exceptionThrown') errors.push(msg.params.exceptionDetails.exception?.description || msg.params.exceptionDetails.text);
    if (msg.method === 'Runtime.consoleAPICalled' && msg.params.type === 'error') errors.push(msg.params.args.map((a) => a.value ?? a.description).join(' '));
  });
  await cdp.send('Runtime.enable', {}, sessionId);
  await cdp.send('Page.enable', {}, sessionId);
  await cdp.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: 1, mobile: false }, sessionId);
  await cdp.send('Emulation.setFocusEmulationEnabled', { enabled: true }, sessionId);
  return { sessionId, browserContextId, targetId, errors };
}

/**
 * What every page class of the browser tests shares: a page opened by `openPage`, evaluated in and
 * polled. The classes extend it with their own navigation, reload and screenshot behaviour.
 */
class PageHandle {
  constructor(cdp, name, { sessionId, browserContextId, targetId, errors }) {
    Object.assign(this, { cdp, name, session: sessionId, browserContextId, targetId, errors });
  }
  /** A fresh page in its own context (of the calling class), on `url` if given. */
  static async open(cdp, url, name) {
    const page = new this(cdp, name, await openPage(cdp));
    if (url) await page.goto(url);
    return page;
  }
  /** Navigates, then waits for the document and the page's `aether` client. */
  async goto(url) {
    await this.cdp.send('Page.navigate', { url }, this.session);
    await this.wait('document.readyState === "complete" && !!window.aether', 15000, 'page load');
  }
  /**
   * Page.reload, then waits for the new document (a marker set on the old one is gone).
   * `ignoreCache`: a hard reload, which also bypasses the service worker.
   */
  async reload({ ignoreCache }) {
    await this.eval('window.__beforeReload = true');
    await this.cdp.send('Page.reload', { ignoreCache }, this.session);
    await this.wait('!window.__beforeReload && document.readyState === "complete" && !!window.aether', 15000, 'reload');
  }
  async eval(expression) {
    const r = await this.cdp.send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true, userGesture: true }, this.session);
    if (r.exceptionDetails) throw new Error(this.name + ': ' + (r.exceptionDetails.exception?.description || r.exceptionDetails.text));
    return r.result.value;
  }
  wait(expression, ms, what) {
    return untilAsync(() => this.eval(expression), ms, `${this.name}: ${what || expression}`);
  }
}

/**
 * Starts the relay on `port` (0: any) with the given ledger and static dir, `extra` TOML appended
 * to its config (e.g. a `[mesh]` table); resolves {proc, port, mesh, log}, `mesh` being the
 * `host:port` of the peer listener when it logs one (`mesh listening on ws://…`), else null.
 */
async function startRelay(dir, port, ledger, staticDir = STATIC, extra = '') {
  const config = path.join(dir, `aether-${port}.toml`);
  fs.writeFileSync(config, `[server]\nbind = "127.0.0.1:${port}"\nstatic_dir = ${JSON.stringify(staticDir)}\n[ledger]\npath = ${JSON.stringify(ledger)}\n${extra}`);
  const proc = spawn(BIN, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  proc.stderr.on('data', (c) => (log += c));
  let got;
  try {
    got = await until(() => (/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log) || [])[1] || (proc.exitCode !== null && 'exit'), 20000, 'relay start');
  } catch (e) {
    proc.kill('SIGKILL'); // never leave a relay behind that did not start in time
    throw new Error(e.message + ':\n' + log);
  }
  if (got === 'exit') throw new Error('relay exited: ' + log);
  const mesh = (/mesh listening on wss?:\/\/(\S+)/.exec(log) || [])[1] || null;
  return { proc, port: Number(got), mesh, log: () => log };
}
async function stopRelay(relay) {
  if (!relay || relay.proc.exitCode !== null) return;
  relay.proc.kill('SIGKILL'); // like a crash; every acknowledged write is already in the ledger
  await Promise.race([new Promise((r) => relay.proc.once('exit', r)), sleep(5000)]);
}

/** Headless Chromium with its own profile; resolves {proc, cdp}. */
async function launchChromium(dir) {
  const profile = path.join(dir, 'profile');
  const proc = spawn(CHROMIUM, [
    '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', '--remote-debugging-address=127.0.0.1',
    '--remote-debugging-port=0', '--user-data-dir=' + profile, 'about:blank',
  ], { stdio: 'ignore', detached: true });
  try {
    const active = await until(() => {
      try {
        const [p, wsPath] = fs.readFileSync(path.join(profile, 'DevToolsActivePort'), 'utf8').split('\n');
        return p && wsPath ? `ws://127.0.0.1:${p}${wsPath}` : null;
      } catch {
        return null;
      }
    }, 20000, 'DevTools port');
    return { proc, cdp: await CDP.connect(active) };
  } catch (e) {
    killChromium(proc);
    throw e;
  }
}
function killChromium(proc) {
  if (!proc || proc.exitCode !== null) return;
  try {
    process.kill(-proc.pid, 'SIGKILL');
  } catch {
    proc.kill('SIGKILL');
  }
}
function closeChromium(chromium) {
  if (!chromium) return;
  chromium.cdp.close();
  killChromium(chromium.proc);
}

module.exports = { CDP, openPage, PageHandle, startRelay, stopRelay, launchChromium, killChromium, closeChromium };

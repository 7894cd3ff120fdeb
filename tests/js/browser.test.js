'use strict';
// A real browser loads /aether.mjs and /aether-react.mjs natively from the real relay.
// Needs AETHER_BIN and Chromium (CHROMIUM=<path>, or `chromium` on PATH); skipped otherwise.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { test, Aether, MemoryStorage, until, sleep, aetherBin } = require('./helpers');

const BIN = aetherBin();
const STATIC = path.join(__dirname, '..', '..', 'static');
const FIXTURE = path.join(__dirname, 'fixtures', 'browser');
const REACT_UMD = path.join(__dirname, 'node_modules', 'react', 'umd', 'react.development.js');

const { findChromium, loadWs } = require('./helpers');
const CHROMIUM = findChromium();
const WS = loadWs();
const skip = !BIN ? 'AETHER_BIN is not set' : !CHROMIUM ? 'no Chromium' : !WS || !fs.existsSync(REACT_UMD) ? 'npm install first' : false;

test('a real browser loads the client as native ES modules and syncs through the relay', { skip, timeout: 90000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'aether-browser-'));
  const site = path.join(dir, 'site');
  fs.mkdirSync(site);
  for (const f of fs.readdirSync(STATIC)) if (/^aether.*\.(m?js)$/.test(f)) fs.copyFileSync(path.join(STATIC, f), path.join(site, f));
  for (const f of fs.readdirSync(FIXTURE)) fs.copyFileSync(path.join(FIXTURE, f), path.join(site, f));
  fs.copyFileSync(REACT_UMD, path.join(site, 'react.development.js'));
  const config = path.join(dir, 'aether.toml');
  fs.writeFileSync(config, `[server]\nbind = "127.0.0.1:0"\nstatic_dir = ${JSON.stringify(site)}\n[ledger]\npath = ${JSON.stringify(path.join(dir, 'l.jsonl'))}\n`);
  const relay = spawn(BIN, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let browser = null;
  let client = null;
  try {
    let log = '';
    relay.stderr.on('data', (c) => (log += c));
    const port = Number(await until(() => (/listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log) || [])[1], 20000, 'relay start'));
    client = new Aether(`ws://127.0.0.1:${port}/ws`, { WebSocket: WS, storage: new MemoryStorage(), BroadcastChannel: null });
    await until(() => client.connected, 10000, 'node client');
    browser = spawn(CHROMIUM, [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-dev-shm-usage',
      '--remote-debugging-port=0', '--user-data-dir=' + path.join(dir, 'profile'), `http://127.0.0.1:${port}/index.html`,
    ], { stdio: 'ignore', detached: true });
    const result = await until(() => client.get('browser:result'), 60000, 'the page\'s result');
    assert.equal(result.error, undefined, result.error);
    assert.equal(result.protocol, 2);
    assert.match(result.stamp, /^\d{20}\.\d{10}\./);
    assert.match(result.color, /^hsl\(/);
    assert.equal(result.hooks, 'function,function,function');
    assert.equal(result.sameClass, true);
    assert.deepEqual(result.cached, { ok: true, n: null });
    assert.equal(result.broadcastChannel, true);
    assert.deepEqual(client.get('browser:value'), { ok: true, n: null });
  } finally {
    if (client) client.close();
    if (browser && browser.exitCode === null) {
      try {
        process.kill(-browser.pid, 'SIGKILL'); // the browser and its helper processes (its own group)
      } catch {
        browser.kill('SIGKILL');
      }
    }
    relay.kill('SIGTERM');
    await Promise.race([new Promise((r) => relay.once('exit', r)), sleep(5000)]);
    if (relay.exitCode === null) relay.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

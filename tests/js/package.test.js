'use strict';
// The client loads as a <script> (global), as a native browser ES module, from CommonJS and from
// Node ESM; the npm package ships every file it imports; the types pass `tsc --strict`.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const { execFileSync, spawnSync } = require('node:child_process');
const { test, FakeRelay, MemoryStorage, until } = require('./helpers');

const STATIC = path.join(__dirname, '..', '..', 'static');
const read = (name) => fs.readFileSync(path.join(STATIC, name), 'utf8');
const hasModule = (name) => fs.existsSync(path.join(__dirname, 'node_modules', name));

test('CommonJS: require() gives the class', () => {
  const Aether = require(path.join(STATIC, 'aether.js'));
  assert.equal(typeof Aether, 'function');
  assert.equal(Aether.Aether, Aether);
  assert.equal(typeof Aether.AetherWriteError, 'function');
});

test('Node ESM: aether.mjs exports the same class as require()', async () => {
  const mod = await import(path.join(STATIC, 'aether.mjs'));
  assert.equal(mod.default, require(path.join(STATIC, 'aether.js')));
  assert.equal(mod.Aether, mod.default);
  assert.equal(mod.AetherWriteError, mod.default.AetherWriteError);
});

test('a plain <script>: the global Aether, using the page\'s WebSocket and localStorage', async () => {
  const relay = new FakeRelay();
  relay.write('k', 'from the relay');
  const storage = new MemoryStorage();
  const context = vm.createContext({ WebSocket: relay.WebSocket, localStorage: storage, setTimeout, clearTimeout, console, Promise });
  context.window = context;
  vm.runInContext(read('aether.js'), context, { filename: 'aether.js' });
  assert.equal(typeof context.Aether, 'function');
  const a = new context.Aether('ws://relay.test/ws');
  await until(() => a.get('k') === 'from the relay');
  a.set('mine', 1);
  await a.whenDurable();
  a.close();
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(storage.getItem('aether::state::ws://relay.test/ws'));
});

test('a browser ES module: import Aether from "/aether.mjs" works without a build step', () => {
  // Evaluates aether.mjs and aether.js as a browser does (both as ES modules, no CommonJS, no
  // Node resolution), in a child process because vm modules need a flag.
  const script = `
    const vm = require('node:vm');
    const fs = require('node:fs');
    const path = require('node:path');
    const dir = ${JSON.stringify(STATIC)};
    const context = vm.createContext({ console, setTimeout, clearTimeout });
    context.globalThis = context;
    const load = (file) => new vm.SourceTextModule(fs.readFileSync(path.join(dir, file), 'utf8'), { context, identifier: '/' + file });
    (async () => {
      const main = load('aether.mjs');
      const cache = new Map();
      await main.link((specifier) => {
        if (!specifier.startsWith('./')) throw new Error('bare specifier ' + specifier);
        const file = specifier.slice(2);
        if (!cache.has(file)) cache.set(file, load(file));
        return cache.get(file);
      });
      await main.evaluate();
      const A = main.namespace.default;
      if (typeof A !== 'function' || A !== main.namespace.Aether) throw new Error('no default export');
      const a = new A('ws://x', { WebSocket: null, storage: null, BroadcastChannel: null });
      a.set('k', 1);
      if (a.get('k') !== 1) throw new Error('not working');
      a.close();
      console.log('ok');
    })().catch((e) => { console.error(e); process.exit(1); });
  `;
  const out = spawnSync(process.execPath, ['--experimental-vm-modules', '--no-warnings', '-e', script], { encoding: 'utf8', timeout: 30000 });
  assert.equal(out.status, 0, out.stderr);
  assert.equal(out.stdout.trim(), 'ok');
});

test('the package resolves by name through its exports map: require and import', { skip: !hasModule('aether-actix-client') && 'npm install first' }, async () => {
  const cjs = require('aether-actix-client');
  const esm = await import('aether-actix-client');
  assert.equal(esm.default, cjs);
  const pkg = JSON.parse(read('package.json'));
  assert.equal(pkg.name, 'aether-actix-client');
  assert.equal(pkg.version, '0.1.0');
  assert.ok(pkg.exports['.'] && pkg.exports['./react']);
});

test('npm pack --dry-run lists every file the package imports or points to', () => {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: STATIC, encoding: 'utf8', timeout: 60000 });
  const files = new Set(JSON.parse(out)[0].files.map((f) => f.path));
  const pkg = JSON.parse(read('package.json'));
  const targets = new Set();
  const walk = (v) => {
    if (typeof v === 'string') targets.add(v.replace(/^\.\//, ''));
    else if (v && typeof v === 'object') Object.values(v).forEach(walk);
  };
  walk(pkg.exports);
  walk(pkg.typesVersions);
  [pkg.main, pkg.module, pkg.types, pkg.browser].forEach(walk);
  // Follow relative imports from every entry point.
  const queue = Array.from(targets);
  const seen = new Set();
  while (queue.length) {
    const file = queue.pop();
    if (seen.has(file)) continue;
    seen.add(file);
    assert.ok(files.has(file), `${file} is referenced but not packed (packed: ${Array.from(files).join(', ')})`);
    const text = read(file);
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)['"](\.\/[^'"]+)['"]/g)) {
      let dep = m[1].slice(2);
      if (file.endsWith('.ts') || file.endsWith('.mts')) {
        // TypeScript maps './aether.js' to './aether.d.ts'.
        dep = dep.replace(/\.m?js$/, (ext) => (ext === '.mjs' ? '.d.mts' : '.d.ts'));
      }
      queue.push(dep);
    }
  }
  for (const need of ['aether.js', 'aether.mjs', 'aether.d.ts', 'aether-react.mjs', 'aether-react.d.ts']) {
    assert.ok(seen.has(need), need + ' reachable from the package entry points');
  }
  assert.ok(!files.has('index.html'), 'the demo page is not part of the package');
});

test('aether-react.d.mts is an exact copy of aether-react.d.ts', () => {
  assert.equal(read('aether-react.d.mts'), read('aether-react.d.ts'));
});

const tsc = path.join(__dirname, 'node_modules', 'typescript', 'bin', 'tsc');
for (const config of ['tsconfig.json', 'tsconfig.bundler.json', 'tsconfig.global.json']) {
  test(`types: tsc --strict --noEmit -p types/${config}`, { skip: !fs.existsSync(tsc) && 'npm install first (typescript)' }, () => {
    const out = spawnSync(process.execPath, [tsc, '--strict', '--noEmit', '-p', path.join(__dirname, 'types', config)], { encoding: 'utf8', timeout: 120000 });
    assert.equal(out.status, 0, out.stdout + out.stderr);
  });
}

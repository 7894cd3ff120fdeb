// React hooks (static/aether-react.mjs) with react-test-renderer: useAether like useState,
// a meta object that keeps its identity, useAetherSnapshot, useAetherSupersede.
import test from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const { FakeRelay, MemoryStorage, ChannelBus, until, sleep } = require('./helpers.js');
const haveReact = fs.existsSync(path.join(here, 'node_modules', 'react-test-renderer'));

// 'react' is a bare specifier: resolve it from tests/js/node_modules by loading a fresh copy of
// the client files from a directory inside it (static/ has no node_modules of its own).
async function loadHooks() {
  const dir = path.join(here, 'node_modules', '.aether-under-test');
  fs.mkdirSync(dir, { recursive: true });
  for (const f of ['aether.js', 'aether.mjs', 'aether-react.mjs']) {
    fs.copyFileSync(path.join(here, '..', '..', 'static', f), path.join(dir, f));
  }
  return import(pathToFileURL(path.join(dir, 'aether-react.mjs')).href + '?t=' + Date.now());
}

test('React hooks', { timeout: 30000, skip: !haveReact && 'npm install first (react, react-test-renderer)' }, async (t) => {
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;
  const React = require('react');
  const { create, act } = require('react-test-renderer');
  const hooks = await loadHooks();
  const { configureAether, getAether, useAether, useAetherSnapshot, useAetherSupersede, useAetherStatus } = hooks;
  assert.equal(hooks.default, useAether);
  assert.throws(() => configureAether({}), TypeError);

  const relay = new FakeRelay();
  relay.write('count', 1);
  configureAether({
    url: 'ws://relay.test/ws',
    WebSocket: relay.WebSocket,
    storage: new MemoryStorage(),
    BroadcastChannel: new ChannelBus().BroadcastChannel,
  });
  const client = getAether();
  assert.equal(getAether(), client, 'one shared client');

  const renders = [];
  let api = null;
  function Counter({ label }) {
    const [count, setCount, meta] = useAether('count', 0);
    const [missing] = useAether('missing', 'fallback');
    const snap = useAetherSnapshot();
    const status = useAetherStatus();
    useAetherSupersede((key, attempted, actual) => renders.push({ superseded: [key, attempted, actual] }));
    api = { setCount, meta, snap, status };
    renders.push({ label, count, missing, meta, data: snap.data, snap });
    return React.createElement('span', null, label + ':' + count);
  }

  let root;
  await act(async () => {
    root = create(React.createElement(Counter, { label: 'a' }));
  });
  await act(async () => {
    await until(() => client.connected && client.get('count') === 1, 3000, 'connected');
  });
  let last = renders[renders.length - 1];
  assert.equal(last.count, 1);
  assert.equal(last.missing, 'fallback');
  assert.equal(last.meta.connected, true);
  assert.equal(last.meta.ready, true);
  assert.equal(last.meta.client, client);
  assert.equal(root.toJSON().children.join(''), 'a:1');

  await t.test('the meta object and the snapshot data keep their identity when nothing changed', async () => {
    const before = renders[renders.length - 1];
    await act(async () => {
      root.update(React.createElement(Counter, { label: 'b' }));
    });
    const after = renders[renders.length - 1];
    assert.equal(after.label, 'b');
    assert.equal(after.meta, before.meta);
    assert.equal(after.data, before.data);
    assert.equal(after.snap, before.snap);
  });

  await t.test('setValue writes (functional updates too); undefined deletes', async () => {
    await act(async () => {
      const w = api.setCount((n) => n + 1);
      await w.durable;
    });
    assert.equal(relay.state.get('count'), 2);
    assert.equal(renders[renders.length - 1].count, 2);
    assert.deepEqual(renders[renders.length - 1].data, { count: 2 });
    await act(async () => {
      await api.setCount(undefined).durable;
    });
    assert.equal(relay.state.has('count'), false);
    assert.equal(renders[renders.length - 1].count, 0, 'default again');
    await act(async () => {
      relay.write('count', 7);
      await until(() => client.get('count') === 7);
    });
    assert.equal(renders[renders.length - 1].count, 7);
  });

  await t.test('meta changes identity when connected changes; useAetherSupersede fires on a loss', async () => {
    const before = renders[renders.length - 1].meta;
    await act(async () => {
      relay.kill(1001, 'server shutting down');
      await until(() => !client.connected);
    });
    const during = renders[renders.length - 1].meta;
    assert.notEqual(during, before);
    assert.equal(during.connected, false);
    await act(async () => {
      await until(() => client.connected, 4000, 'reconnected');
    });
    await act(async () => {
      await api.setCount(8).durable;
      relay.write('count', 9);
      await until(() => client.get('count') === 9);
      await sleep(10);
    });
    // Our delete lost to the relay's 7 earlier, and now our 8 lost to 9.
    assert.deepEqual(renders.filter((r) => r.superseded).map((r) => r.superseded), [['count', undefined, 7], ['count', 8, 9]]);
    assert.equal(api.status.status.connected, true);
  });

  await act(async () => {
    root.unmount();
  });
  client.close();
});

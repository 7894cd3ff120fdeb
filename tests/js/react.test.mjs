// React hooks (static/aether-react.mjs) with react-test-renderer: useAether like useState,
// a meta object that keeps its identity, useAetherSnapshot, useAetherSupersede; every client a
// hook opened is closed (unmount, token change) and opened once under StrictMode; one ready()
// per client; react-dom/server renders the defaults and opens nothing.
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
  return import(pathToFileURL(path.join(dir, 'aether-react.mjs')).href + '?t=' + Date.now() + '-' + ++loads);
}
let loads = 0;

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

/** `relay.WebSocket`, counting the sockets made and which of them the client closed. */
function countedSockets(relay) {
  const sockets = [];
  class Counted extends relay.WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
    close(code) {
      this.closedByClient = true;
      return super.close(code);
    }
  }
  const live = () => sockets.filter((s) => !s.closedByClient && s.readyState !== 3);
  return { sockets, live, WebSocket: Counted };
}

test('hooks close what they opened: StrictMode opens one client, a token change closes the old one, unmount closes the last', { timeout: 30000, skip: !haveReact && 'npm install first' }, async () => {
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;
  const React = require('react');
  const { create, act } = require('react-test-renderer');
  const hooks = await loadHooks();
  const { configureAether, getAether, useAether, useAetherSnapshot, useAetherSupersede, useAetherStatus, Aether } = hooks;
  const readyCalls = new Map();
  const ready = Aether.prototype.ready;
  Aether.prototype.ready = function () {
    readyCalls.set(this, (readyCalls.get(this) || 0) + 1);
    return ready.call(this);
  };
  const relay = new FakeRelay();
  relay.write('count', 3);
  const ws = countedSockets(relay);
  configureAether({ url: 'ws://relay.test/ws', WebSocket: ws.WebSocket, storage: new MemoryStorage(), BroadcastChannel: new ChannelBus().BroadcastChannel });

  const seen = [];
  let api = null;
  function Panel({ token }) {
    const opts = { authToken: token };
    const [count, setCount, meta] = useAether('count', 0, opts);
    const [label, setLabel] = useAether('label', 'none', opts);
    const snap = useAetherSnapshot(opts);
    const status = useAetherStatus(opts);
    useAetherSupersede(() => {}, [], opts);
    // A callback from the first render, before the client is open, still writes through it.
    React.useEffect(() => {
      setLabel('mounted:' + token);
    }, [setLabel, token]);
    api = { setCount, meta, snap, status };
    seen.push({ token, count, label, client: meta.client });
    return React.createElement('span', null, `${count}/${label}/${Object.keys(snap.data).length}`);
  }
  const app = (token) => React.createElement(React.StrictMode, null, React.createElement(Panel, { token }), React.createElement(Panel, { token }));

  let root;
  await act(async () => {
    root = create(app('a'));
  });
  await act(async () => {
    await until(() => api.meta.connected && api.meta.ready, 3000, 'connected');
  });
  assert.equal(ws.sockets.length, 1, 'StrictMode mounted twice, one client, one socket: ' + ws.sockets.map((s) => s.url));
  assert.match(ws.sockets[0].url, /auth_token=a/);
  const first = api.meta.client;
  assert.equal(seen.filter((r) => r.client).every((r) => r.client === first), true, 'one client for both components');
  assert.equal(seen[0].client, null, 'the first render opens nothing');
  await act(async () => {
    await until(() => relay.state.get('label') === 'mounted:a', 3000, 'the effect\'s write');
  });
  assert.equal(root.toJSON().map((n) => n.children.join('')).join(' '), '3/mounted:a/2 3/mounted:a/2');

  // A new token: a new client; the old one is closed (its socket too) and stays closed.
  await act(async () => {
    root.update(app('b'));
  });
  await act(async () => {
    await until(() => api.meta.connected && api.meta.client !== first, 3000, 'the new client');
    await until(() => ws.live().length === 1, 3000, 'the old socket closed');
  });
  const second = api.meta.client;
  assert.match(ws.live()[0].url, /auth_token=b/);
  assert.equal(first.connected, false);
  const writeOnOld = first.set('x', 1);
  await assert.rejects(writeOnOld.durable, /closed/, 'the old client is closed');
  await act(async () => {
    await sleep(300); // an old client that still reconnected would have made a socket by now
  });
  assert.equal(ws.sockets.length, 2, ws.sockets.map((s) => s.url).join(' '));
  assert.equal(second.connected, true);

  // Unmount: the last holder closes it.
  await act(async () => {
    root.unmount();
  });
  await until(() => ws.live().length === 0, 3000, 'every socket closed after unmount');
  await sleep(300);
  assert.equal(ws.sockets.length, 2, 'nothing reconnected');
  assert.equal(second.connected, false);

  // getAether(): the app's client; hooks that use it never close it.
  const pinned = getAether({ authToken: 'c' });
  await act(async () => {
    root = create(app('c'));
  });
  await act(async () => {
    await until(() => api.meta.connected, 3000, 'connected');
  });
  assert.equal(api.meta.client, pinned);
  assert.equal(seen[seen.length - 1].client, pinned);
  await act(async () => {
    root.unmount();
  });
  await sleep(50);
  assert.equal(pinned.connected, true, 'the app closes its own client');
  pinned.close();
  assert.equal(getAether({ authToken: 'c' }) === pinned, false, 'a closed client leaves the registry');
  getAether({ authToken: 'c' }).close();
  await until(() => ws.live().length === 0, 3000, 'all closed');

  // One ready() per client, however many hooks, StrictMode remounts and re-renders.
  for (const [client, n] of readyCalls) assert.ok(n <= 1, `ready() called ${n} times on one client`);
  Aether.prototype.ready = ready;
});

test('ready() is asked once per client while it is not ready, across mounts and unmounts', { timeout: 30000, skip: !haveReact && 'npm install first' }, async () => {
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;
  const React = require('react');
  const { create, act } = require('react-test-renderer');
  const hooks = await loadHooks();
  const { configureAether, getAether, useAether, useAetherStatus, Aether } = hooks;
  const relay = new FakeRelay();
  relay.down = true; // never ready: no cache, no relay
  configureAether({ url: 'ws://down.test/ws', WebSocket: relay.WebSocket, storage: new MemoryStorage(), BroadcastChannel: null });
  const client = getAether();
  let calls = 0;
  const ready = client.ready.bind(client);
  client.ready = () => {
    calls++;
    return ready();
  };
  function Item() {
    const [v, , meta] = useAether('k', 'd');
    useAetherStatus();
    return React.createElement('i', null, v + ':' + meta.ready);
  }
  let root;
  for (let round = 0; round < 20; round++) {
    await act(async () => {
      root = create(React.createElement(React.StrictMode, null, ...Array.from({ length: 5 }, (_, i) => React.createElement(Item, { key: i }))));
    });
    await act(async () => {
      root.unmount();
    });
  }
  assert.equal(calls, 1, 'one pending ready() for 100 mounts');
  // When it does become ready, every mounted hook hears it.
  await act(async () => {
    root = create(React.createElement(Item));
  });
  assert.equal(root.toJSON().children.join(''), 'd:false');
  relay.down = false;
  relay.write('k', 'v');
  await act(async () => {
    client.reconnect();
    await until(() => client.isReady, 5000, 'ready');
    await sleep(10);
  });
  assert.equal(root.toJSON().children.join(''), 'v:true');
  await act(async () => {
    root.unmount();
  });
  client.close();
});

test('server rendering (react-dom/server) shows the defaults and opens no socket, even with a global WebSocket', { timeout: 30000, skip: !fs.existsSync(path.join(here, 'node_modules', 'react-dom')) && 'npm install first (react-dom)' }, async () => {
  const React = require('react');
  const { renderToString } = require('react-dom/server');
  const hooks = await loadHooks();
  const { configureAether, useAether, useAetherSnapshot, useAetherStatus, useAetherSupersede } = hooks;
  const made = [];
  const saved = globalThis.WebSocket;
  globalThis.WebSocket = class SpySocket {
    constructor(url) {
      made.push(url);
      throw new Error('a socket opened on the server');
    }
  };
  try {
    configureAether({ url: 'ws://relay.test/ws' });
    function Page() {
      const [title, setTitle, meta] = useAether('doc:title', 'Untitled');
      const { data } = useAetherSnapshot();
      const { status } = useAetherStatus({ authToken: 'someone' });
      useAetherSupersede(() => {});
      assert.equal(typeof setTitle, 'function');
      return React.createElement('p', null, [title, Object.keys(data).length, meta.ready, meta.connected, meta.client, status.connected].map(String).join('|'));
    }
    const html = renderToString(React.createElement(React.StrictMode, null, React.createElement(Page)));
    assert.equal(html, '<p>Untitled|0|false|false|null|false</p>');
    assert.deepEqual(made, []);
  } finally {
    if (saved === undefined) delete globalThis.WebSocket;
    else globalThis.WebSocket = saved;
  }
});

test('hooks take { room, token }: one client per room, the token function asked for its connects', { timeout: 30000, skip: !haveReact && 'npm install first' }, async () => {
  globalThis.IS_REACT_ACT_ENVIRONMENT = true;
  const React = require('react');
  const { create, act } = require('react-test-renderer');
  const hooks = await loadHooks();
  const { configureAether, useAether, useAetherStatus } = hooks;
  const relay = new FakeRelay({ token: (t) => t.startsWith('tok-') });
  configureAether({ url: 'ws://relay.test/ws', WebSocket: relay.WebSocket, storage: new MemoryStorage(), BroadcastChannel: null });
  let asked = 0;
  const token = async () => 'tok-' + ++asked; // created once, outside the component
  const seen = {};
  function Board({ room }) {
    const [title, setTitle, meta] = useAether('title', 'untitled', { room, token });
    const { client } = useAetherStatus({ room, token });
    seen[room] = { title, setTitle, meta, client };
    return React.createElement('b', null, room + ':' + title);
  }
  let root;
  await act(async () => {
    root = create(React.createElement(React.StrictMode, null, React.createElement(Board, { room: 'team-a' }), React.createElement(Board, { room: 'team-b' })));
  });
  await act(async () => {
    await until(() => seen['team-a'].meta.connected && seen['team-b'].meta.connected, 3000, 'both rooms connected');
  });
  const a = seen['team-a'].client;
  const b = seen['team-b'].client;
  assert.notEqual(a, b, 'a client per room');
  assert.equal(a.room, 'team-a');
  assert.equal(b.room, 'team-b');
  assert.equal(asked, 2, 'one token per connect, StrictMode included');
  const rooms = relay.urls.map((u) => new URL(u).searchParams.get('room')).sort();
  assert.deepEqual(rooms, ['team-a', 'team-b']);
  await act(async () => {
    root.unmount();
  });
  await until(() => a.status.connected === false && b.status.connected === false, 3000, 'closed on unmount');
});

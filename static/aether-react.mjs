/*!
 * aether-react.mjs — React hooks for the aether-actix browser client (React 18+).
 *
 *   import { configureAether, useAether } from 'aether-actix-client/react';
 *   configureAether({ url: 'ws://127.0.0.1:8211/ws' });
 *   const [title, setTitle, meta] = useAether('doc:title', 'Untitled');
 *
 * In a browser without a bundler, map the bare specifier 'react' with an import map; this file
 * and ./aether.mjs load natively. Types: aether-react.d.ts.
 *
 * Ownership: rendering never opens a client. A mounted hook holds its configuration's client
 * (opened in a layout effect, so not on a server, where effects never run) and lets go of it when
 * it unmounts or its configuration (url, token, cache key, any option) changes; the last hook to
 * let go closes it, unless the app asked for it with getAether() (then the app closes it).
 */
import * as ReactNamespace from 'react';
import Aether from './aether.mjs';

// React is CommonJS in Node and most bundlers: its hooks are on the namespace or on `default`.
const React =
  ReactNamespace && typeof ReactNamespace.useSyncExternalStore === 'function'
    ? ReactNamespace
    : ReactNamespace.default;
const { useSyncExternalStore, useCallback, useEffect, useLayoutEffect, useMemo, useReducer, useRef } = React;

// A layout effect opens the client before the browser paints, so a cached state never flashes the
// defaults first. Without a DOM (a server renderer, a test renderer) a plain effect does the same
// work without React's server warning about layout effects.
const useOpenEffect = typeof window !== 'undefined' && typeof document !== 'undefined' ? useLayoutEffect : useEffect;

const noop = () => {};
const EMPTY = Object.freeze({});
const OFFLINE_STATUS = Object.freeze({
  connected: false,
  protocol: null,
  clientId: null,
  code: null,
  reason: null,
  retryInMs: null,
  fatal: false,
  pending: 0,
});

let defaults = null;

/** Sets the defaults every hook uses: `{ url, ...Aether options }` (or `{ client }`). */
export function configureAether(config) {
  if (!config || (typeof config.url !== 'string' && !(config.client instanceof Aether))) {
    throw new TypeError('configureAether: config.url must be a string (or pass config.client)');
  }
  defaults = Object.assign({}, config);
}

// ---- The registry: one client per configuration, counted holders ----

/** id -> { id, client, holders, pinned, closeTimer } */
const registry = new Map();
/** Options that are objects or functions (a WebSocket class, a storage) count by identity. */
const objectIds = new WeakMap();
let nextObjectId = 0;

/** Every option takes part in the id: a different token, URL, cache key or room is another client. */
function idOf(url, opts) {
  const parts = [url];
  for (const name of Object.keys(opts).sort()) {
    const v = opts[name];
    if (v === undefined) continue;
    if (v !== null && (typeof v === 'object' || typeof v === 'function')) {
      let n = objectIds.get(v);
      if (n === undefined) objectIds.set(v, (n = ++nextObjectId));
      parts.push(name, '#' + n);
    } else {
      parts.push(name, v);
    }
  }
  return JSON.stringify(parts);
}

/** `options` over the configured defaults: `{ client }` (the app's own) or `{ id, url, opts }`. */
function resolve(options, who) {
  const config = Object.assign({}, defaults, options);
  if (config.client instanceof Aether) return { client: config.client, id: null };
  if (typeof config.url !== 'string') {
    throw new TypeError(who + ': no url: call configureAether({ url }) first or pass { url }');
  }
  const opts = Object.assign({}, config);
  delete opts.url;
  delete opts.client;
  return { client: null, id: idOf(config.url, opts), url: config.url, opts };
}

/** The registry's entry for `config`, opened if there is none; a pending close is called off. */
function open(config) {
  let entry = registry.get(config.id);
  if (entry) {
    clearTimeout(entry.closeTimer);
    entry.closeTimer = null;
    return entry;
  }
  const client = new Aether(config.url, config.opts);
  entry = { id: config.id, client, holders: 0, pinned: false, closeTimer: null };
  const e = entry;
  // Closed by anyone (the app, or the last hook): it leaves the registry, so whoever asks next
  // gets a fresh client instead of a closed one.
  const close = client.close;
  client.close = function () {
    if (registry.get(e.id) === e) registry.delete(e.id);
    clearTimeout(e.closeTimer);
    e.closeTimer = null;
    return close.apply(this, arguments);
  };
  registry.set(config.id, entry);
  return entry;
}

function hold(config) {
  const entry = open(config);
  entry.holders++;
  return entry;
}

/**
 * One holder fewer; the last one closes the client (its outbox stays persisted for the next
 * client of the same cache key). The close waits one task, so StrictMode's unmount-and-mount
 * again, or a remount in the same commit, keeps the same client instead of reconnecting.
 */
function letGo(entry) {
  entry.holders--;
  if (entry.holders > 0 || entry.pinned || entry.closeTimer) return;
  entry.closeTimer = setTimeout(() => {
    entry.closeTimer = null;
    if (entry.holders === 0 && !entry.pinned && registry.get(entry.id) === entry) entry.client.close();
  }, 0);
}

/**
 * The shared client for `options` merged over the configured defaults, opened now if needed.
 * The app owns a client it got this way: hooks never close it; `client.close()` does (and the
 * next getAether or hook for that configuration opens a new one).
 */
export function getAether(options) {
  const config = resolve(options, 'getAether');
  if (config.client) return config.client;
  const entry = open(config);
  entry.pinned = true;
  return entry.client;
}

/**
 * The client for this render: the app's own, or the registry's if some holder opened it already,
 * else null (the first render of the first hook, and always on a server). `live.current` is the
 * client this hook holds once mounted, for callbacks that run before the next render.
 */
function useClient(options, who) {
  const config = resolve(options, who);
  const entry = config.client ? null : registry.get(config.id);
  const client = config.client || (entry ? entry.client : null);
  const [, rerender] = useReducer((n) => n + 1, 0);
  const live = useRef(null);
  useOpenEffect(() => {
    if (config.client) {
      live.current = config.client;
      return undefined;
    }
    const held = hold(config);
    live.current = held.client;
    if (held.client !== client) rerender();
    return () => {
      if (live.current === held.client) live.current = null;
      letGo(held);
    };
    // config.id stands for every option; config itself is new on every render.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [config.client, config.id]);
  return { client, live };
}

function current(live, client, who) {
  const c = live.current || client;
  if (!c) throw new Error(who + ': no client yet (not mounted, or rendering on a server)');
  return c;
}

/** One `ready()` per client, shared by every subscriber (no resolver per subscription). */
const readiness = new WeakMap();
function onReady(client, notify) {
  let r = readiness.get(client);
  if (!r) {
    r = { listeners: new Set(), waiting: false };
    readiness.set(client, r);
  }
  const listeners = r.listeners;
  listeners.add(notify);
  if (!r.waiting && !client.isReady) {
    r.waiting = true;
    client.ready().then(() => {
      for (const f of Array.from(listeners)) f();
    });
  }
  return () => {
    listeners.delete(notify);
  };
}

const serverFalse = () => false;

/** `connected` and `ready` as React state. */
function useConnection(client) {
  const subscribeStatus = useCallback((notify) => (client ? client.onStatus(() => notify()) : noop), [client]);
  const connected = useSyncExternalStore(subscribeStatus, () => !!client && client.connected, serverFalse);
  const subscribeReady = useCallback((notify) => (client ? onReady(client, notify) : noop), [client]);
  const ready = useSyncExternalStore(subscribeReady, () => !!client && client.isReady, serverFalse);
  return { connected, ready };
}

const serverUndefined = () => undefined;

/**
 * `[value, setValue, meta]`, like useState, for one key. `value` is `defaultValue` while the key
 * is absent (and before the client is open, and on a server). `setValue(next | prev => next)`
 * writes (an `undefined` result deletes) and returns the write handle. `meta` is
 * `{ ready, connected, client }`, the same object until one changes.
 */
export function useAether(key, defaultValue, options) {
  const { client, live } = useClient(options, 'useAether');
  const k = String(key);
  const subscribe = useCallback((notify) => (client ? client.on(k, () => notify()) : noop), [client, k]);
  const raw = useSyncExternalStore(subscribe, () => (client ? client.get(k) : undefined), serverUndefined);
  const value = raw === undefined ? defaultValue : raw;

  const latest = useRef(defaultValue);
  latest.current = defaultValue;
  const setValue = useCallback(
    (next) => {
      const c = current(live, client, 'useAether');
      if (typeof next === 'function') {
        const now = c.get(k);
        next = next(now === undefined ? latest.current : now);
      }
      return next === undefined ? c.delete(k) : c.set(k, next);
    },
    [client, k, live]
  );

  const { connected, ready } = useConnection(client);
  const meta = useMemo(() => ({ ready, connected, client }), [ready, connected, client]);
  return [value, setValue, meta];
}

/** Per-client cache of the whole-state object, rebuilt only after a change. */
const snapshots = new WeakMap();
function snapshotStore(client) {
  let store = snapshots.get(client);
  if (!store) {
    store = { version: 0, builtAt: -1, data: null };
    const s = store;
    client.onAny(() => {
      s.version++;
    });
    snapshots.set(client, store);
  }
  return store;
}

const serverEmpty = () => EMPTY;

/**
 * The whole state: `{ data, setKey, deleteKey, ready, connected, client }`. `data` is a plain
 * object that keeps its identity until something changes; so does the returned object.
 */
export function useAetherSnapshot(options) {
  const { client, live } = useClient(options, 'useAetherSnapshot');
  const subscribe = useCallback((notify) => (client ? client.onAny(() => notify()) : noop), [client]);
  const getSnapshot = useCallback(() => {
    if (!client) return EMPTY;
    const store = snapshotStore(client);
    if (store.builtAt !== store.version || store.data === null) {
      store.data = client.snapshot();
      store.builtAt = store.version;
    }
    return store.data;
  }, [client]);
  const data = useSyncExternalStore(subscribe, getSnapshot, serverEmpty);
  const setKey = useCallback((key, value) => current(live, client, 'setKey').set(key, value), [client, live]);
  const deleteKey = useCallback((key) => current(live, client, 'deleteKey').delete(key), [client, live]);
  const { connected, ready } = useConnection(client);
  return useMemo(
    () => ({ data, setKey, deleteKey, ready, connected, client }),
    [data, setKey, deleteKey, ready, connected, client]
  );
}

/**
 * Calls `callback(key, attempted, actual)` when one of this client's writes lost (protocol v2).
 * The latest callback is always used; `deps` is accepted for upstream compatibility.
 */
export function useAetherSupersede(callback, deps, options) {
  const { client } = useClient(options, 'useAetherSupersede');
  const latest = useRef(callback);
  latest.current = callback;
  useEffect(
    () => (client ? client.onSupersede((key, attempted, actual) => latest.current(key, attempted, actual)) : undefined),
    [client]
  );
}

const serverStatus = () => OFFLINE_STATUS;

/** `{ connected, ready, status, client }` for a status badge; re-renders on every status change. */
export function useAetherStatus(options) {
  const { client } = useClient(options, 'useAetherStatus');
  const subscribe = useCallback((notify) => (client ? client.onStatus(() => notify()) : noop), [client]);
  const cache = useRef(null);
  const getStatus = useCallback(() => {
    if (!client) return OFFLINE_STATUS;
    const next = client.status;
    const prev = cache.current;
    if (prev && JSON.stringify(prev) === JSON.stringify(next)) return prev;
    cache.current = next;
    return next;
  }, [client]);
  const status = useSyncExternalStore(subscribe, getStatus, serverStatus);
  const { connected, ready } = useConnection(client);
  return useMemo(() => ({ connected, ready, status, client }), [connected, ready, status, client]);
}

export { Aether };
export default useAether;

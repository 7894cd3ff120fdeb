/*!
 * aether-react.mjs — React hooks for the aether-actix browser client (React 18+).
 *
 *   import { configureAether, useAether } from 'aether-actix-client/react';
 *   configureAether({ url: 'ws://127.0.0.1:8211/ws' });
 *   const [title, setTitle, meta] = useAether('doc:title', 'Untitled');
 *
 * In a browser without a bundler, map the bare specifier 'react' with an import map; this file
 * and ./aether.mjs load natively. Types: aether-react.d.ts.
 */
import * as ReactNamespace from 'react';
import Aether from './aether.mjs';

// React is CommonJS in Node and most bundlers: its hooks are on the namespace or on `default`.
const React =
  ReactNamespace && typeof ReactNamespace.useSyncExternalStore === 'function'
    ? ReactNamespace
    : ReactNamespace.default;
const { useSyncExternalStore, useCallback, useEffect, useMemo, useRef } = React;

/** One client per (url, token, cache key), shared by every hook, never closed. */
const clients = new Map();
let defaults = null;

/** Sets the defaults every hook uses: `{ url, ...Aether options }` (or `{ client }`). */
export function configureAether(config) {
  if (!config || (typeof config.url !== 'string' && !(config.client instanceof Aether))) {
    throw new TypeError('configureAether: config.url must be a string (or pass config.client)');
  }
  defaults = Object.assign({}, config);
}

/** The shared client for `options` merged over the configured defaults. */
export function getAether(options) {
  const config = Object.assign({}, defaults, options);
  if (config.client instanceof Aether) return config.client;
  if (typeof config.url !== 'string') {
    throw new TypeError('getAether: no url: call configureAether({ url }) first or pass { url }');
  }
  const id = config.url + '|' + (config.authToken || '') + '|' + (config.cacheKey || '');
  let client = clients.get(id);
  if (!client) {
    const opts = Object.assign({}, config);
    delete opts.url;
    delete opts.client;
    client = new Aether(config.url, opts);
    clients.set(id, client);
  }
  return client;
}

function useClient(options) {
  // Resolved every render, but getAether returns the same instance for the same configuration.
  return getAether(options);
}

/** `connected` and `ready` as React state. */
function useConnection(client) {
  const subscribeStatus = useCallback((notify) => client.onStatus(() => notify()), [client]);
  const connected = useSyncExternalStore(subscribeStatus, () => client.connected, () => false);
  const subscribeReady = useCallback(
    (notify) => {
      let live = true;
      client.ready().then(() => {
        if (live) notify();
      });
      return () => {
        live = false;
      };
    },
    [client]
  );
  const ready = useSyncExternalStore(subscribeReady, () => client.isReady, () => false);
  return { connected, ready };
}

/**
 * `[value, setValue, meta]`, like useState, for one key. `value` is `defaultValue` while the key
 * is absent. `setValue(next | prev => next)` writes (an `undefined` result deletes) and returns
 * the write handle. `meta` is `{ ready, connected, client }`, the same object until one changes.
 */
export function useAether(key, defaultValue, options) {
  const client = useClient(options);
  const k = String(key);
  const subscribe = useCallback((notify) => client.on(k, () => notify()), [client, k]);
  const raw = useSyncExternalStore(subscribe, () => client.get(k), () => undefined);
  const value = raw === undefined ? defaultValue : raw;

  const latest = useRef(defaultValue);
  latest.current = defaultValue;
  const setValue = useCallback(
    (next) => {
      if (typeof next === 'function') {
        const current = client.get(k);
        next = next(current === undefined ? latest.current : current);
      }
      return next === undefined ? client.delete(k) : client.set(k, next);
    },
    [client, k]
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

/**
 * The whole state: `{ data, setKey, deleteKey, ready, connected, client }`. `data` is a plain
 * object that keeps its identity until something changes; so does the returned object.
 */
export function useAetherSnapshot(options) {
  const client = useClient(options);
  const store = snapshotStore(client);
  const subscribe = useCallback((notify) => client.onAny(() => notify()), [client]);
  const getSnapshot = useCallback(() => {
    if (store.builtAt !== store.version || store.data === null) {
      store.data = client.snapshot();
      store.builtAt = store.version;
    }
    return store.data;
  }, [client, store]);
  const data = useSyncExternalStore(subscribe, getSnapshot, getSnapshot);
  const setKey = useCallback((key, value) => client.set(key, value), [client]);
  const deleteKey = useCallback((key) => client.delete(key), [client]);
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
  const client = useClient(options);
  const latest = useRef(callback);
  latest.current = callback;
  useEffect(
    () => client.onSupersede((key, attempted, actual) => latest.current(key, attempted, actual)),
    [client]
  );
}

/** `{ connected, ready, status, client }` for a status badge; re-renders on every status change. */
export function useAetherStatus(options) {
  const client = useClient(options);
  const subscribe = useCallback((notify) => client.onStatus(() => notify()), [client]);
  const cache = useRef(null);
  const getStatus = useCallback(() => {
    const next = client.status;
    const prev = cache.current;
    if (prev && JSON.stringify(prev) === JSON.stringify(next)) return prev;
    cache.current = next;
    return next;
  }, [client]);
  const status = useSyncExternalStore(subscribe, getStatus, getStatus);
  const { connected, ready } = useConnection(client);
  return useMemo(() => ({ connected, ready, status, client }), [connected, ready, status, client]);
}

export { Aether };
export default useAether;

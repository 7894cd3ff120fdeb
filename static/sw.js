/*
 * sw.js — the offline app shell of the aether-actix demos and examples.
 *
 * Registered by the demo and example pages (through /sw-register.js) with scope `/`. The shell is
 * the explicit list PRECACHE below, versioned as one unit by VERSION: a worker caches the whole
 * list at install, all or nothing, in its own cache `aether-shell-<VERSION>`, and answers those
 * URLs from that cache only. So every file a page loads comes from the same version, online and
 * offline, and a page opened once loads with the relay stopped, renders its last state from
 * localStorage, queues edits in the client's durable outbox and sends them when the relay is back
 * (the client reconnects by itself).
 *
 * Everything else goes to the network untouched, as without a worker: any URL not in the list,
 * a listed URL with a query string (except a navigation to a listed page: `?relay=…` is read by
 * the page itself), a request that says `Cache-Control: no-store` (or `cache: 'no-store'`),
 * anything but GET, other origins, the WebSocket. Nothing is ever cached at run time.
 *
 * Upgrades: VERSION is a hash of this file and of every listed file; tests/js/offline-shell.test.js
 * fails with the value to put here when one changes. The browser then installs the new worker,
 * which precaches the new list into a new cache; if any file fails, the install fails and the
 * worker in charge keeps serving its complete cache. A new worker waits (the old one keeps serving
 * its pages) until a page that finished loading asks it to take over while it is the only window
 * (sw-register.js does), or until every old page is gone; on taking over it deletes older caches
 * and the pages it took reload once, so none runs an old aether.js beside a new one.
 */
'use strict';

const VERSION = '345c37706b4217cc';
const PREFIX = 'aether-shell-';
const CACHE = PREFIX + VERSION;

/** Every URL the shell owns: cached together at install, served only from this version's cache. */
const PRECACHE = [
  '/',
  '/index.html',
  '/topology/topology.css',
  '/topology/topology.js',
  '/demos/kanban.html',
  '/demos/markdown.html',
  '/demos/demo.css',
  '/demos/demo-common.js',
  '/aether.js',
  '/aether.mjs',
  '/aether-react.mjs',
  '/sw-register.js',
  '/examples/vanilla-counter.html',
  '/examples/react-counter.html',
  '/examples/vendor/react.mjs',
  '/examples/vendor/react-dom.mjs',
  '/examples/vendor/react-dom-client.mjs',
  '/examples/vendor/react.production.min.js',
  '/examples/vendor/react-dom.production.min.js',
];
/** The pages among them: a navigation to one is answered whatever its query string. */
const PAGES = new Set(PRECACHE.filter((url) => url.endsWith('/') || url.endsWith('.html')));
const SHELL = new Set(PRECACHE);

const noStore = (headers) => /(^|[\s,])no-store($|[\s,;=])/i.test(headers.get('cache-control') || '');

/**
 * Fetches the whole list straight from the relay (`reload`: not from the HTTP cache), then stores
 * it. Any failure (a network error, a status other than 2xx, a redirect, `no-store`) rejects
 * before anything is stored: the install fails and the worker in charge keeps its cache.
 */
async function precache() {
  const responses = await Promise.all(
    PRECACHE.map(async (url) => {
      const res = await fetch(new Request(url, { cache: 'reload', credentials: 'same-origin' }));
      if (!res.ok || res.redirected || res.type !== 'basic') throw new Error(`precache ${url}: HTTP ${res.status}`);
      if (noStore(res.headers)) throw new Error(`precache ${url}: Cache-Control: no-store`);
      return res;
    }),
  );
  const existed = await caches.has(CACHE);
  try {
    const cache = await caches.open(CACHE);
    await Promise.all(PRECACHE.map((url, i) => cache.put(url, responses[i])));
  } catch (err) {
    if (!existed) await caches.delete(CACHE); // no half-filled cache left behind (e.g. quota)
    throw err;
  }
}

self.addEventListener('install', (event) => {
  event.waitUntil(precache());
});

// Only a worker whose precache completed gets here, so deleting the older caches loses nothing.
self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      await Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n)));
      await self.clients.claim(); // pages opened before the first install: offline from now on
    })(),
  );
});

// A page that finished loading asks a waiting worker to take over. It does only when that page is
// the only window (which reloads at once); otherwise it waits until the old pages are gone.
self.addEventListener('message', (event) => {
  if (!event.data || event.data.type !== 'aether-shell-activate') return;
  event.waitUntil(
    (async () => {
      const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
      if (windows.length <= 1) await self.skipWaiting();
    })(),
  );
});

/** The cache key of a request this worker answers, or null to leave it to the network. */
function shellKey(request) {
  if (request.method !== 'GET') return null;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return null;
  if (request.cache === 'no-store' || noStore(request.headers)) return null;
  if (request.mode === 'navigate') return PAGES.has(url.pathname) ? url.origin + url.pathname : null;
  return url.search === '' && SHELL.has(url.pathname) ? url.href : null;
}

async function fromShell(key, request) {
  const hit = await (await caches.open(CACHE)).match(key);
  // A miss cannot happen after a complete install (the cache was cleared by hand): the network.
  return hit || fetch(request);
}

self.addEventListener('fetch', (event) => {
  const key = shellKey(event.request);
  if (key === null) return; // the browser does what it would without us
  event.respondWith(fromShell(key, event.request));
});

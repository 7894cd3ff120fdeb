/*
 * sw.js — the offline app shell of the aether-actix demos and examples.
 *
 * Registered by every demo page (through /sw-register.js) with scope `/`. It precaches the pages,
 * the browser client and their assets, and answers every same-origin GET network-first: a fresh
 * copy from the relay when it answers (and that copy replaces the cached one), the cached copy
 * when it does not. So a page opened once loads with the relay stopped, renders its last state
 * from localStorage, queues edits in the client's durable outbox and sends them when the relay is
 * back (the client reconnects by itself).
 *
 * Never touched: the WebSocket (a service worker never sees it anyway), /healthz, /metrics, other
 * origins, anything but GET.
 *
 * Upgrades: change VERSION when the precache list changes (page contents need no bump: they are
 * network-first). The new worker precaches, takes over at once (skipWaiting + clients.claim) and
 * deletes every older `aether-shell-*` cache, so no tab keeps being served an old copy.
 */
'use strict';

const VERSION = 'v1';
const PREFIX = 'aether-shell-';
const CACHE = PREFIX + VERSION;
/** How long a request waits for the relay before the cached copy is used (a hung network). */
const NETWORK_TIMEOUT_MS = 4000;

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

/** Paths that are live data, never cached nor answered from a cache. */
const BYPASS = new Set(['/ws', '/healthz', '/metrics', '/sw.js']);

self.addEventListener('install', (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // `reload`: straight from the relay, not from the HTTP cache. One missing file does not
      // stop the rest from being cached.
      await Promise.all(
        PRECACHE.map(async (url) => {
          try {
            const res = await fetch(new Request(url, { cache: 'reload' }));
            if (res.ok) await cache.put(url, res);
          } catch {
            /* offline while installing: the next fetch fills it in */
          }
        }),
      );
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      await Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE).map((n) => caches.delete(n)));
      await self.clients.claim();
    })(),
  );
});

function handled(request) {
  if (request.method !== 'GET') return false;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return false;
  if (BYPASS.has(url.pathname)) return false;
  if ((request.headers.get('upgrade') || '').toLowerCase() === 'websocket') return false;
  return true;
}

/** The cache key of a request: its path (query strings such as `?relay=` do not matter). */
function keyOf(request) {
  const url = new URL(request.url);
  return url.origin + url.pathname;
}

async function fromCache(request) {
  const cache = await caches.open(CACHE);
  const key = keyOf(request);
  let hit = await cache.match(key);
  if (!hit && key.endsWith('/')) hit = await cache.match(key + 'index.html');
  if (!hit && key.endsWith('/index.html')) hit = await cache.match(key.slice(0, -'index.html'.length));
  return hit;
}

async function networkFirst(event) {
  const request = event.request;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), NETWORK_TIMEOUT_MS);
  try {
    // `no-cache`: revalidate with the relay (ETag), never a heuristically fresh HTTP-cache copy.
    const res = await fetch(request, { cache: 'no-cache', signal: controller.signal });
    clearTimeout(timer);
    if (res.ok && res.type === 'basic' && !res.redirected) {
      const copy = res.clone();
      event.waitUntil(caches.open(CACHE).then((cache) => cache.put(keyOf(request), copy)).catch(() => {}));
    }
    return res;
  } catch (err) {
    clearTimeout(timer);
    const hit = await fromCache(request);
    if (hit) return hit;
    if (request.mode === 'navigate') {
      return new Response(
        '<!doctype html><meta charset="utf-8"><title>Offline</title><p>The relay cannot be reached and this page was never opened here before. Try again when it is back.</p>',
        { status: 503, headers: { 'content-type': 'text/html; charset=utf-8' } },
      );
    }
    throw err;
  }
}

self.addEventListener('fetch', (event) => {
  if (!handled(event.request)) return; // the browser does what it would without us
  event.respondWith(networkFirst(event));
});

/*
 * sw-register.js — registers the offline app shell (/sw.js, scope `/`) when the browser can.
 * Include it in a page with <script src="/sw-register.js"></script>. Needs a secure context
 * (https, or http://localhost / http://127.0.0.1); elsewhere it does nothing.
 *
 * A page runs one version of the shell. When a new version is installed and waiting, this page,
 * once loaded, asks it to take over, and asks again every second while it waits (it does only
 * while this is the only window); when a new worker
 * takes over a page an older one served, the page reloads once, to load the new version whole.
 */
(function () {
  'use strict';
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return;
  var sw = navigator.serviceWorker;
  var served = !!sw.controller; // this page came from a worker's shell
  var reloading = false;
  sw.addEventListener('controllerchange', function () {
    if (!served) {
      served = true; // the first install claimed a page that came from the network: same files
      return;
    }
    if (reloading) return;
    reloading = true;
    location.reload();
  });
  function offer(worker) {
    if (!sw.controller) return; // nothing older runs here: the new worker activates by itself
    // Asked again every second while the new worker waits: it takes over only while this is the
    // only window, and the others may close later (or be closing while this page loads).
    var ask = function () {
      if (worker.state !== 'installed') return;
      worker.postMessage({ type: 'aether-shell-activate' });
      setTimeout(ask, 1000);
    };
    if (document.readyState === 'complete') ask();
    else window.addEventListener('load', ask, { once: true });
  }
  function watch(worker) {
    if (!worker) return;
    if (worker.state === 'installed') return offer(worker);
    worker.addEventListener('statechange', function () {
      if (worker.state === 'installed') offer(worker);
    });
  }
  sw.register('/sw.js', { scope: '/' }).then(function (reg) {
    watch(reg.waiting);
    watch(reg.installing);
    reg.addEventListener('updatefound', function () {
      watch(reg.installing);
    });
  }).catch(function (err) {
    // Not fatal: the page works online without it.
    console.warn('aether: service worker not registered:', err && err.message);
  });
})();

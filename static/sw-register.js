/*
 * sw-register.js — registers the offline app shell (/sw.js, scope `/`) when the browser can.
 * Include it in a page with <script src="/sw-register.js"></script>. Needs a secure context
 * (https, or http://localhost / http://127.0.0.1); elsewhere it does nothing.
 */
(function () {
  'use strict';
  if (!('serviceWorker' in navigator) || !window.isSecureContext) return;
  navigator.serviceWorker.register('/sw.js', { scope: '/' }).catch(function (err) {
    // Not fatal: the page works online without it.
    console.warn('aether: service worker not registered:', err && err.message);
  });
})();

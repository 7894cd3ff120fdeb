/* Shared helpers of the kanban and markdown demos (plain script, global `AetherDemo`). */
(function () {
  'use strict';

  /** The relay's WebSocket URL: `?relay=ws://…` if given, else this page's host at /ws. */
  function relayUrl() {
    const given = new URLSearchParams(location.search).get('relay');
    if (given && /^wss?:\/\//i.test(given)) return given;
    return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  }

  /**
   * The room this page lives in: `?room=NAME` if given, `?room=` (empty) for the relay's default
   * room (where the demos lived before rooms), else `fallback`. Returns null for the default room.
   */
  function roomName(fallback) {
    const q = new URLSearchParams(location.search);
    if (!q.has('room')) return fallback;
    return q.get('room') || null;
  }

  /** Shows the room in `el` (small, in the header): its name, or "default room". */
  function showRoom(el, room) {
    if (!el) return;
    el.textContent = room === null ? 'default room' : 'room ' + room;
    el.title = room === null ? 'the relay\'s default room (open ?room=NAME for another)' : 'room ' + room + ' (open ?room=NAME for another)';
    el.dataset.room = room === null ? '' : room;
  }

  /** A short random id: `prefix-` + 8 hex digits. */
  function uid(prefix) {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    return prefix + '-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }

  /**
   * A number strictly between `lo` and `hi` (either may be null: open end), a little randomised so
   * two tabs inserting at the same gap rarely pick the same value (ties are broken by id anyway).
   */
  function between(lo, hi) {
    if (lo == null && hi == null) return 1;
    if (lo == null) return hi - 1;
    if (hi == null) return lo + 1;
    if (!(hi > lo)) return lo + 1e-9;
    return lo + (hi - lo) * (0.4 + 0.2 * Math.random());
  }

  /**
   * Keeps `el` (a .status pill with a .dot and a .text child) telling the truth about the
   * connection: connected / syncing N / offline, N changes waiting / refused.
   */
  function statusBadge(aether, el, toastEl) {
    const text = el.querySelector('.text');
    let refused = null;
    let toastTimer = null;
    const host = (() => {
      try { return new URL(aether.url).host; } catch { return aether.url; }
    })();
    function plural(n, word) {
      return n + ' ' + word + (n === 1 ? '' : 's');
    }
    function paint() {
      const st = aether.status || {};
      const pending = aether.pendingWrites();
      let cls;
      let label;
      if (refused || st.fatal) {
        cls = 'refused';
        label = 'refused · ' + (refused || 'authentication failed');
      } else if (aether.connected && pending > 0) {
        cls = 'syncing';
        label = 'syncing ' + plural(pending, 'change') + '…';
      } else if (aether.connected) {
        cls = 'connected';
        label = 'connected · ' + host;
      } else {
        cls = 'offline';
        label = pending > 0 ? 'offline · ' + plural(pending, 'change') + ' waiting' : 'offline · reconnecting…';
      }
      el.className = 'status ' + cls;
      el.dataset.state = cls;
      el.title = 'relay ' + aether.url + (st.reason ? ' (last close: ' + st.code + ' ' + st.reason + ')' : '');
      if (text.textContent !== label) text.textContent = label;
    }
    function toast(message) {
      if (!toastEl) return;
      toastEl.textContent = message;
      toastEl.classList.add('show');
      clearTimeout(toastTimer);
      toastTimer = setTimeout(() => toastEl.classList.remove('show'), 6000);
    }
    aether.onStatus((connected) => {
      if (connected) refused = null;
      paint();
    });
    aether.onError((err) => {
      if (err.fatal) {
        refused = err.type === 'auth' ? 'authentication failed'
          : err.type === 'forbidden' ? 'no access to this room' : err.message;
      }
      toast(err.message || String(err.type));
      paint();
    });
    aether.onAny(paint);
    setInterval(paint, 400);
    paint();
    return { paint, toast };
  }

  window.AetherDemo = { relayUrl, roomName, showRoom, uid, between, statusBadge };
})();

/*!
 * aether.js — browser client for the aether-actix relay.
 *
 * A synced key/value map: every tab of every user sees the same keys. Speaks protocol v2 with
 * aether-actix (acks, stamps, resume) and falls back to upstream's protocol v1 against an
 * Aether-Core 0.4.0 server. Offline-first: state is cached in localStorage, writes made offline wait
 * in a durable outbox and are sent, paced under the relay's rate limit, when the connection returns.
 *
 * One file, three ways to load it:
 *   <script src="/aether.js"></script>            -> global `Aether`
 *   import Aether from '/aether.mjs'              -> native ES module (wraps this file)
 *   const Aether = require('aether-actix-client') -> CommonJS
 *
 * API reference: README.md beside this file. Types: aether.d.ts. MIT licence.
 *
 * Parts, each a small class with narrow hooks into the client:
 *   Outbox      pending writes in send order, with the ids that make retries exactly-once
 *   Tabs        the tabs of one scope: BroadcastChannel, each tab's Web Lock, the leader lock
 *               (the leader owns the scope's one socket), heartbeats; TabLink, a follower's
 *               stand-in socket through the leader (each tab's cursor still its own: v2 `tab`)
 *   LocalStore  localStorage that never throws: state cache (+ version), outboxes, client id
 *   Backoff     reconnect delays, reset only by a connection that lasted
 *   Connection  one socket in one explicit state ('idle', 'connecting', 'open', 'closed'), one
 *               teardown (`end`), the retry timer and the liveness watchdog
 *   Aether      the store (relay state, pending writes laid over it, watchers), the protocol, and
 *               the policies that tie the parts together (full storage, adoption, scopes)
 */
(function (root, factory) {
  'use strict';
  var Aether = factory();
  if (typeof module === 'object' && module && typeof module.exports === 'object') {
    module.exports = Aether;
  } else if (root) {
    root.Aether = Aether;
  }
})(typeof globalThis !== 'undefined' ? globalThis : typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  // ---------------------------------------------------------------------------------------------
  // Constants
  // ---------------------------------------------------------------------------------------------

  /** localStorage cache format version (upstream's `{"v":1,"data":{…}}`). */
  var CACHE_VERSION = 1;
  /** Debounce of the state cache write, as upstream. */
  var CACHE_DEBOUNCE_MS = 80;
  /** Deepest nesting the relay accepts in a value. */
  var MAX_VALUE_DEPTH = 64;
  /** How long a tab waits for the owner of an outbox to say it is alive before adopting it. */
  var ADOPT_PROBE_MS = 300;
  /** How often a tab with pending writes refreshes its outbox heartbeat. */
  var OUTBOX_BEAT_MS = 20000;
  /** A sibling's optimistic write that was never settled is forgotten after this long. */
  var PEER_OVERLAY_TTL_MS = 60000;
  /** A disconnected tab follows one sibling's re-posts; it switches after this much silence. */
  var BC_SOURCE_TTL_MS = 5000;
  /** A connection that lasted this long was a real one: the next failure starts backing off anew. */
  var STABLE_CONNECTION_MS = 10000;
  /** How often an open connection checks that it is alive (acks and pongs overdue). */
  var WATCHDOG_MS = 1000;
  /** Per-key bookkeeping is pruned once it holds this many keys more than the state. */
  var BOOKKEEPING_SLACK = 1024;
  /** A token with an expiry is refreshed this long before it at the latest... */
  var REFRESH_AHEAD_MS = 30000;
  /** ...or, when its remaining life is short, after this share of it. */
  var REFRESH_AT_SHARE = 0.8;
  /** The leader tab says it is alive this often; followers check it as often. */
  var LEADER_BEAT_MS = 1000;
  /** A leader not heard for this long (plus up to LEADER_JITTER_MS) is gone: a follower takes over. */
  var LEADER_TIMEOUT_MS = 3000;
  var LEADER_JITTER_MS = 1000;
  /** A follower whose link request no leader tab answers within this long tries again later. */
  var LINK_TIMEOUT_MS = 2000;

  var DEFAULTS = {
    autoReconnect: true,
    minReconnectDelayMs: 200,
    maxReconnectDelayMs: 30000,
    persist: true,
    protocol: 2,
    sendBurst: 100,
    sendRatePerSecond: 50,
    maxKeyBytes: 256,
    maxValueBytes: 32768,
    supersedeWindowMs: 0,
    maxTrackedWrites: 1024,
    outboxStaleMs: 60000,
    ackTimeoutMs: 15000,
    pingIntervalMs: 25000,
    pingTimeoutMs: 5000,
  };

  // ---------------------------------------------------------------------------------------------
  // Small helpers
  // ---------------------------------------------------------------------------------------------

  function noop() {}

  function now() {
    return Date.now();
  }

  function randomId() {
    var c = typeof globalThis !== 'undefined' ? globalThis.crypto : undefined;
    if (c && typeof c.randomUUID === 'function') {
      try {
        return c.randomUUID();
      } catch (_) {
        /* insecure context: fall through */
      }
    }
    return 'tab-' + Math.random().toString(36).slice(2) + now().toString(36);
  }

  /** A short random token of [a-z0-9] (ids of clients and writes). */
  function shortId(n) {
    var out = '';
    var c = typeof globalThis !== 'undefined' ? globalThis.crypto : undefined;
    if (c && typeof c.getRandomValues === 'function') {
      var bytes = new Uint8Array(n);
      c.getRandomValues(bytes);
      for (var i = 0; i < n; i++) out += (bytes[i] % 36).toString(36);
      return out;
    }
    while (out.length < n) out += Math.random().toString(36).slice(2);
    return out.slice(0, n);
  }

  /** 32-bit FNV-1a of a string, as 8 hex digits: a name for a token that is not the token. */
  function fingerprint(s) {
    var h = 0x811c9dc5;
    for (var i = 0; i < s.length; i++) {
      h ^= s.charCodeAt(i);
      h = Math.imul(h, 0x01000193) >>> 0;
    }
    return ('0000000' + h.toString(16)).slice(-8);
  }

  /**
   * Who a token speaks for, for naming storage: a JWT's `sub` (read, not verified: the relay
   * verifies), else a fingerprint of the token; null without a token.
   */
  function userOf(token) {
    if (!token) return null;
    var parts = token.split('.');
    if (parts.length === 3) {
      try {
        var b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
        while (b64.length % 4) b64 += '=';
        var text = typeof atob === 'function' ? atob(b64) : Buffer.from(b64, 'base64').toString('binary');
        var claims = JSON.parse(decodeURIComponent(escape(text)));
        if (claims && typeof claims.sub === 'string' && claims.sub) return 'sub:' + claims.sub;
      } catch (_) {
        /* not a JWT after all */
      }
    }
    return 'token:' + fingerprint(token);
  }

  /**
   * The storage scope of a client: its cache key (default `aether::state::<relay url>`, naming the
   * relay), then `::room::<room>` for a room other than the default one, then `::user::<user>`
   * with a token. Cache, outbox, client id, tab channel and locks all live under it, so two rooms,
   * two accounts or two relays never share.
   */
  function scopeKey(url, explicitKey, token, room) {
    var base = explicitKey || 'aether::state::' + url;
    if (room) base += '::room::' + room;
    var user = userOf(token);
    return user ? base + '::user::' + user : base;
  }

  /** Refreshes are at least this far apart (a clock far ahead of the relay's must not spin). */
  var MIN_REFRESH_MS = 1000;

  /**
   * When to refresh a token that expires in `remainingMs`: 30 s before, or at 80 % of a short
   * life; never sooner than MIN_REFRESH_MS.
   */
  function refreshDelay(remainingMs) {
    var d = remainingMs > 0 ? Math.max(remainingMs - REFRESH_AHEAD_MS, remainingMs * REFRESH_AT_SHARE) : 0;
    return Math.round(Math.max(MIN_REFRESH_MS, d));
  }

  /** UTF-8 byte length of a string, without allocating. */
  function utf8Length(s) {
    var n = 0;
    for (var i = 0; i < s.length; i++) {
      var c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4;
        i++;
      } else n += 3;
    }
    return n;
  }

  function depthExceeds(value, limit) {
    if (value === null || typeof value !== 'object') return false;
    if (limit <= 0) return true;
    var items = Array.isArray(value) ? value : Object.keys(value).map(function (k) { return value[k]; });
    for (var i = 0; i < items.length; i++) {
      if (depthExceeds(items[i], limit - 1)) return true;
    }
    return false;
  }

  /** Structural equality of JSON values; object key order does not matter. */
  function jsonEqual(a, b) {
    if (a === b) return true;
    if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
    var arrayA = Array.isArray(a);
    if (arrayA !== Array.isArray(b)) return false;
    if (arrayA) {
      if (a.length !== b.length) return false;
      for (var i = 0; i < a.length; i++) if (!jsonEqual(a[i], b[i])) return false;
      return true;
    }
    var ka = Object.keys(a);
    if (ka.length !== Object.keys(b).length) return false;
    for (var j = 0; j < ka.length; j++) {
      if (!Object.prototype.hasOwnProperty.call(b, ka[j]) || !jsonEqual(a[ka[j]], b[ka[j]])) return false;
    }
    return true;
  }

  /** Inserts `name=value` query parameters before any `#fragment`, as upstream did for auth_token. */
  function withQuery(url, params) {
    var hash = url.indexOf('#');
    var out = hash >= 0 ? url.slice(0, hash) : url;
    var fragment = hash >= 0 ? url.slice(hash) : '';
    for (var i = 0; i < params.length; i++) {
      var sep = out.indexOf('?') < 0 ? '?' : /[?&]$/.test(out) ? '' : '&';
      out += sep + params[i][0] + '=' + encodeURIComponent(params[i][1]);
    }
    return out + fragment;
  }

  /** Splits a resume token `<run>.<seq>` at its last '.'. */
  function parseToken(token) {
    if (typeof token !== 'string') return null;
    var dot = token.lastIndexOf('.');
    if (dot <= 0) return null;
    var seq = Number(token.slice(dot + 1));
    if (!Number.isFinite(seq) || seq < 0) return null;
    return { run: token.slice(0, dot), seq: seq };
  }

  function callSafely(fn, args) {
    try {
      fn.apply(undefined, args);
    } catch (err) {
      if (typeof console !== 'undefined' && console.error) console.error('[aether] watcher threw:', err);
    }
  }

  function requireFunction(cb, name) {
    if (typeof cb !== 'function') throw new TypeError('Aether.' + name + ': callback must be a function');
  }

  function subscribe(set, cb) {
    set.add(cb);
    return function unsubscribe() {
      set.delete(cb);
    };
  }

  function timer(fn, ms, unref) {
    var t = setTimeout(fn, ms);
    if (unref && t && typeof t.unref === 'function') t.unref();
    return t;
  }

  // ---------------------------------------------------------------------------------------------
  // Write handles
  // ---------------------------------------------------------------------------------------------

  /** Why a write will never apply: `reason` is the relay's nack reason or a client-side one. */
  class AetherWriteError extends Error {
    constructor(write, reason) {
      super('aether: write to "' + write.key + '" failed: ' + reason);
      this.name = 'AetherWriteError';
      this.reason = reason;
      this.key = write.key;
      this.write = write;
    }
  }

  /**
   * What `set`/`delete` return. Not a thenable on purpose (so forgetting `await` or returning it
   * from an async function never blocks); `durable` is a promise created on first access, so an
   * ignored failure is never an unhandled rejection.
   */
  class AetherWrite {
    constructor(key, op, value) {
      this.key = key;
      this.op = op;
      this.value = value;
      /** 'pending' | 'durable' | 'failed' */
      this.status = 'pending';
      /** v2: the relay's stamp for this write, once acknowledged. */
      this.stamp = null;
      /** v2: the relay's sequence number for this write, once acknowledged. */
      this.seq = null;
      /** Why it failed, when status is 'failed'. */
      this.reason = null;
      this._promise = null;
      this._resolve = null;
      this._reject = null;
    }

    get durable() {
      if (!this._promise) {
        var self = this;
        this._promise = new Promise(function (resolve, reject) {
          self._resolve = resolve;
          self._reject = reject;
        });
        if (this.status === 'durable') this._resolve(this);
        else if (this.status === 'failed') this._reject(new AetherWriteError(this, this.reason));
      }
      return this._promise;
    }

    _succeed(stamp, seq) {
      if (this.status !== 'pending') return;
      this.status = 'durable';
      this.stamp = stamp == null ? null : stamp;
      this.seq = seq == null ? null : seq;
      if (this._resolve) this._resolve(this);
    }

    _fail(reason) {
      if (this.status !== 'pending') return;
      this.status = 'failed';
      this.reason = reason;
      if (this._reject) this._reject(new AetherWriteError(this, reason));
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The outbox
  // ---------------------------------------------------------------------------------------------

  /**
   * Pending writes in send order: `{n, id, op, key, value, t, status, tried, sentAt, writes}`.
   * `n` numbers them in this instance (overlay and channel messages); `id` names the write to the
   * relay (v2 `ref`, with `?cid=`: applied at most once) and survives reloads and adoption;
   * `status` is 'queued' or 'sent' (on the current connection); `tried` once it may have reached
   * the relay, after which it is never merged with a newer write; `writes` are the handles.
   * Persistence and sending are the client's.
   */
  class Outbox {
    constructor() {
      this.entries = [];
      this._nextN = 1;
      this._prefix = shortId(10);
    }

    get size() {
      return this.entries.length;
    }

    count(key) {
      return this.entries.filter(function (e) { return key === null || e.key === key; }).length;
    }

    /**
     * Adds a write. One to a key whose previous write never left this tab replaces it; one that
     * may have reached the relay keeps its id and value. `id` given: another tab's write, kept as
     * it is.
     */
    add(op, key, value, t, id) {
      for (var i = this.entries.length - 1; i >= 0 && !id; i--) {
        var e = this.entries[i];
        if (e.key !== key) continue;
        if (e.status === 'queued' && !e.tried) {
          e.op = op;
          e.value = value;
          e.t = t;
          return e;
        }
        break;
      }
      var n = this._nextN++;
      var entry = {
        n: n, id: id || this._prefix + '.' + n, op: op, key: key, value: value, t: t,
        status: 'queued', tried: !!id, sentAt: 0, writes: [],
      };
      this.entries.push(entry);
      return entry;
    }

    remove(entry) {
      var i = this.entries.indexOf(entry);
      if (i < 0) return false;
      this.entries.splice(i, 1);
      return true;
    }

    /** Empties the outbox; returns what it held. */
    clear() {
      var old = this.entries;
      this.entries = [];
      return old;
    }

    has(id) {
      return this.entries.some(function (e) { return e.id === id; });
    }

    /** A pending write to `key` made after `t` (a newer write wins an adoption). */
    newerThan(key, t) {
      return this.entries.some(function (e) { return e.key === key && e.t > t; });
    }

    hasQueued() {
      return this.entries.some(function (e) { return e.status === 'queued'; });
    }

    /** The connection ended: what was sent on it is queued again (same ids). */
    requeue() {
      this.entries.forEach(function (e) {
        if (e.status === 'sent') e.status = 'queued';
      });
    }

    markSent(e) {
      e.status = 'sent';
      e.sentAt = now();
      e.tried = true;
    }

    /** The latest pending write to `key`, or null. */
    latest(key) {
      for (var i = this.entries.length - 1; i >= 0; i--) if (this.entries[i].key === key) return this.entries[i];
      return null;
    }

    oldestSent(key, pred) {
      for (var i = 0; i < this.entries.length; i++) {
        var e = this.entries[i];
        if (e.key === key && e.status === 'sent' && (!pred || pred(e))) return e;
      }
      return null;
    }

    sentWithId(id) {
      for (var i = 0; i < this.entries.length; i++) {
        var e = this.entries[i];
        if (e.status === 'sent' && e.id === id) return e;
      }
      return null;
    }

    /** Some write was sent more than `ms` ago at `t` and is still unacknowledged. */
    overdue(t, ms) {
      return this.entries.some(function (e) { return e.status === 'sent' && t - e.sentAt > ms; });
    }

    /** The entries as stored (and handed to siblings). */
    record() {
      return this.entries.map(function (e) {
        var out = { id: e.id, op: e.op, key: e.key, t: e.t };
        if (e.op === 'set') out.value = e.value;
        return out;
      });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Tabs of one browser
  // ---------------------------------------------------------------------------------------------

  /**
   * The same-origin tabs of one scope: the BroadcastChannel `'aether::' + scopeKey`, and with Web
   * Locks this tab's own lock (held while it lives: the browser grants it to a waiting sibling
   * only once this tab is gone, and to one only), waits on siblings' locks, and the scope's leader
   * lock. With both Web Locks and a channel the scope is `shared`: the leader (holder of the
   * leader lock) alone owns a socket to the relay, and the others follow it through a `TabLink`.
   * The leader says `beat` every second with its `term` (one more than the last it saw); a follower
   * that hears no beat for LEADER_TIMEOUT_MS (its own timers on time: it was not frozen itself)
   * steals the lock (`steal: true`). A leader that hears a newer term, or loses its lock, steps
   * down: a leader frozen in a long task learns it lost the lead when it runs again. What a
   * message or a sibling's departure means is the client's business; hooks:
   *   message(msg)      a sibling's message
   *   locked()          this tab now holds its own lock (its stored outbox names it)
   *   gone(tab)         a sibling's lock was granted to us: that tab is gone
   *   leading()         this tab became the scope's leader
   *   deposed()         this tab no longer leads (another took the lock, or a newer term)
   *   leaderSeen(open)  a leader beat: `open` when its socket is open (a follower may link now)
   *   open()            whether this tab's own socket is open (told in beats)
   * Without Web Locks every tab leads (own socket), and `gone` never fires (the client falls back
   * to probes); without a channel every tab keeps its own socket and the lock only picks the
   * cache writer.
   */
  class Tabs {
    constructor(tabId, scopeKey, BC, locks, hooks) {
      this.tabId = tabId;
      this._scopeKey = scopeKey;
      this._locks = locks;
      this._hooks = hooks;
      this.channel = null;
      this.ownLock = null;
      this.leader = !locks;
      /** Highest leader term seen (ours included). */
      this.term = 0;
      /** The tab that leads, as far as we know (null: unknown), and when we last heard it. */
      this.leaderTab = null;
      this.leaderAt = now();
      /** A follower's link to the leader, while one is open or opening. */
      this.link = null;
      this._open = true;
      this._releasers = [];
      this._watching = new Set();
      this._abort = typeof AbortController === 'function' ? new AbortController() : null;
      this._lead = null;
      this._tick = null;
      this._tickAt = now();
      this._stealAfter = LEADER_TIMEOUT_MS + Math.random() * LEADER_JITTER_MS;
      if (typeof BC === 'function') {
        try {
          var self = this;
          var bc = new BC('aether::' + scopeKey);
          bc.onmessage = function (ev) {
            var msg = ev && ev.data;
            if (!self._open || !msg || typeof msg !== 'object' || msg.from === tabId) return;
            if (msg.type === 'hi') self._onHi(msg);
            else if (msg.type === 'beat') self._onBeat(msg);
            else if (msg.type === 'welcome' || msg.type === 'down' || msg.type === 'drop') {
              if (self.link) self.link._receive(msg);
            } else self._hooks.message(msg);
          };
          this.channel = bc;
        } catch (_) {
          this.channel = null;
        }
      }
      /** One socket for the scope, owned by the leader. */
      this.shared = !!(locks && this.channel);
      if (locks) this._hold();
      if (this.shared) this._schedule();
    }

    get hasLocks() {
      return !!this._locks;
    }

    /** This tab follows the leader (no socket of its own). */
    get follower() {
      return this.shared && !this.leader;
    }

    /** A follower that knows no leader yet (its lock request is pending, or the leader went). */
    get undecided() {
      return this.follower && (this.leaderTab === null || this.leaderTab === this.tabId);
    }

    post(msg) {
      if (!this.channel) return;
      msg.from = this.tabId;
      try {
        this.channel.postMessage(msg);
      } catch (_) {
        /* uncloneable or closed */
      }
    }

    lockName(tab) {
      return 'aether:' + this._scopeKey + ':tab:' + tab;
    }

    /** Runs a hook after a lock grant, never inside it (a grant may come synchronously). */
    _later(fn) {
      var self = this;
      Promise.resolve().then(function () {
        if (self._open) fn();
      });
    }

    _hold() {
      var self = this;
      var name = this.lockName(this.tabId);
      this._locks.request(name, function () {
        if (!self._open) return undefined;
        self.ownLock = name;
        self._later(function () {
          self._hooks.locked();
          self.post({ type: 'hi' }); // siblings wait on our lock from now on
        });
        return new Promise(function (resolve) { self._releasers.push(resolve); });
      }).catch(noop);
      this._requestLead(false);
    }

    /**
     * Asks for the leader lock: queued behind the holder, or (`steal`) taken from a holder that
     * stopped answering. Whenever our hold ends (released, stolen, aborted) we ask again.
     */
    _requestLead(steal) {
      if (!this._open) return;
      var self = this;
      var req = { release: null, abort: null };
      this._lead = req;
      var opts = {};
      if (steal) opts.steal = true; // (a signal cannot go with steal)
      else if (typeof AbortController === 'function') {
        req.abort = new AbortController();
        opts.signal = req.abort.signal;
      }
      var ended = function () {
        if (self._lead !== req) return; // replaced (by a steal) or closed
        var was = self.leader;
        self.leader = false;
        if (self.leaderTab === self.tabId) self.leaderTab = null;
        if (!self._open) return;
        self.leaderAt = now();
        self._requestLead(false);
        if (was) self._hooks.deposed();
      };
      var p;
      try {
        p = this._locks.request('aether:' + this._scopeKey + ':leader', opts, function () {
          if (!self._open || self._lead !== req) return undefined;
          return new Promise(function (release) {
            req.release = release;
            self.leader = true;
            self.term += 1;
            self.leaderTab = self.tabId;
            self._later(function () {
              if (self._lead !== req || !self.leader) return;
              self._hooks.leading();
              self.beat();
            });
          });
        });
      } catch (_) {
        p = Promise.reject(new Error('locks'));
      }
      Promise.resolve(p).then(ended, ended);
    }

    /** Gives up the lead (a newer leader exists): the lock goes, we queue for it again. */
    _stepDown() {
      var req = this._lead;
      if (req && req.release) req.release();
    }

    /** The leader went quiet: take the lock from it. */
    _steal() {
      var old = this._lead;
      this._lead = null;
      if (old && old.abort) old.abort.abort();
      this.leaderAt = now();
      this._stealAfter = LEADER_TIMEOUT_MS + Math.random() * LEADER_JITTER_MS;
      this._requestLead(true);
    }

    /** The leader tells the followers it is alive (and whether its socket is open). */
    beat() {
      if (!this.shared || !this.leader || !this._open) return;
      this.post({ type: 'beat', term: this.term, open: !!this._hooks.open() });
    }

    _schedule() {
      var self = this;
      this._tick = timer(function () {
        self._tick = null;
        if (!self._open) return;
        var t = now();
        var late = t - self._tickAt > LEADER_BEAT_MS * 2.5;
        self._tickAt = t;
        if (self.leader) self.beat();
        else if (late) self.leaderAt = t; // we were frozen ourselves: give the leader a fresh chance
        else if (t - self.leaderAt > self._stealAfter) self._steal();
        self._schedule();
      }, LEADER_BEAT_MS, true);
    }

    _onBeat(msg) {
      if (!this.shared || typeof msg.term !== 'number' || typeof msg.from !== 'string') return;
      if (msg.term < this.term) return; // a deposed leader that has not noticed yet
      if (this.leader) {
        // Two leaders: the newer term wins (a tie: the greater tab id); the other steps down.
        if (msg.term === this.term && msg.from < this.tabId) return;
        this.term = msg.term;
        this._stepDown();
      }
      this.term = msg.term;
      this.leaderTab = msg.from;
      this.leaderAt = now();
      if (this.link && this.link.leader !== null && this.link.leader !== msg.from) this.link._fail(1001, 'the leader tab changed');
      this._hooks.leaderSeen(!!msg.open);
    }

    /** A sibling holds its own lock: wait on it, and answer so that it waits on ours. */
    _onHi(msg) {
      if (typeof msg.from !== 'string') return;
      this.watch(msg.from);
      if (!msg.reply && this.ownLock) this.post({ type: 'hi', reply: true });
    }

    /** Waits for sibling `tab`'s lock; `gone(tab)` when it is granted. */
    watch(tab) {
      if (!this._locks || !this._open || tab === this.tabId || this._watching.has(tab)) return;
      var self = this;
      this._watching.add(tab);
      var opts = this._abort ? { signal: this._abort.signal } : {};
      this._locks.request(this.lockName(tab), opts, function () {
        self._watching.delete(tab);
        if (self._open) self._hooks.gone(tab);
      }).catch(noop);
    }

    /** Closes the channel, releases this tab's locks and stops waiting on siblings'. */
    close() {
      this._open = false;
      clearTimeout(this._tick);
      this._tick = null;
      if (this.link) this.link.close();
      if (this.channel) {
        try {
          this.channel.close();
        } catch (_) {
          /* ignore */
        }
        this.channel = null;
      }
      this.ownLock = null;
      this.leader = false;
      var lead = this._lead;
      this._lead = null;
      if (lead && lead.release) lead.release();
      if (lead && lead.abort) lead.abort.abort();
      var releasers = this._releasers;
      this._releasers = [];
      releasers.forEach(function (r) { r(); });
      if (this._abort) this._abort.abort();
      this._watching.clear();
    }
  }

  /**
   * A follower's stand-in for a WebSocket: the scope's leader tab carries its frames. It asks the
   * leader to `link`; the leader answers `welcome` with its `hello` and a snapshot of the relay's
   * state (then the follower is open), re-posts every relay frame (`down`), sends what the
   * follower sends (`up`) on its socket, and says `drop` when its socket ends. The Connection
   * treats it as a socket: `send`, `close`, `onmessage`, `onclose`.
   */
  class TabLink {
    constructor(tabs) {
      this._tabs = tabs;
      this.leader = tabs.leaderTab;
      this.open = false;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      if (tabs.link) tabs.link._fail(1001, 'replaced');
      tabs.link = this;
      var self = this;
      this._timer = timer(function () {
        self._fail(1006, 'no leader tab answered');
      }, LINK_TIMEOUT_MS, true);
      tabs.post({ type: 'link', to: this.leader });
    }

    _receive(msg) {
      var tabs = this._tabs;
      if (msg.type === 'welcome') {
        if (msg.to !== tabs.tabId || this.open || !Array.isArray(msg.frames)) return;
        this.leader = msg.from;
        this.open = true;
        clearTimeout(this._timer);
        for (var i = 0; i < msg.frames.length && tabs.link === this; i++) {
          if (this.onmessage) this.onmessage({ data: msg.frames[i] });
        }
      } else if (msg.type === 'down') {
        if (this.open && msg.from === this.leader && typeof msg.text === 'string' && this.onmessage) this.onmessage({ data: msg.text });
      } else if (msg.type === 'drop') {
        if (this.open ? msg.from === this.leader : msg.to === tabs.tabId) {
          this._fail(typeof msg.code === 'number' ? msg.code : 1006, typeof msg.reason === 'string' ? msg.reason : 'the leader tab disconnected');
        }
      }
    }

    send(text) {
      if (!this.open) throw new Error('not linked');
      this._tabs.post({ type: 'up', to: this.leader, text: text });
    }

    _detach() {
      clearTimeout(this._timer);
      if (this._tabs.link === this) this._tabs.link = null;
      var was = this.open;
      this.open = false;
      return was;
    }

    close() {
      if (this._detach()) this._tabs.post({ type: 'unlink', to: this.leader });
    }

    _fail(code, reason) {
      if (this._tabs.link !== this) return;
      this._detach();
      if (this.onclose) this.onclose({ code: code, reason: reason });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Storage
  // ---------------------------------------------------------------------------------------------

  /**
   * localStorage, never throwing (disabled, sandboxed, full), with the records the client keeps
   * under a scope key: the state cache and its version, outboxes, the client id. What to do when
   * storage is full is the client's policy, not this class's.
   */
  class LocalStore {
    constructor(storage) {
      this.storage = storage;
    }

    get(key) {
      try {
        return this.storage.getItem(key);
      } catch (_) {
        return null;
      }
    }

    /** False when the value did not fit (quota) or storage refused. */
    set(key, text) {
      try {
        this.storage.setItem(key, text);
        return true;
      } catch (_) {
        return false;
      }
    }

    remove(key) {
      try {
        this.storage.removeItem(key);
        return true;
      } catch (_) {
        return false;
      }
    }

    /** Keys starting with `prefix`, or null when storage cannot list them. */
    keys(prefix) {
      var s = this.storage;
      if (typeof s.key !== 'function') return null;
      var found = [];
      try {
        for (var i = 0; i < s.length; i++) {
          var k = s.key(i);
          if (typeof k === 'string' && k.indexOf(prefix) === 0) found.push(k);
        }
      } catch (_) {
        return null;
      }
      return found;
    }

    /** The cached state under `key` (`{"v":1,"data":{…}}`), or null. A corrupt cache is removed. */
    readCache(key) {
      var raw = this.get(key);
      if (raw == null) return null;
      var parsed;
      try {
        parsed = JSON.parse(raw);
      } catch (_) {
        this.remove(key);
        return null;
      }
      if (!parsed || parsed.v !== CACHE_VERSION || !parsed.data || typeof parsed.data !== 'object' || Array.isArray(parsed.data)) return null;
      return parsed.data;
    }

    /**
     * Writes the cache of relay run `run` at `seq`, unless the stored one is of the same run and
     * further along: 'saved', 'behind' or 'full'.
     */
    writeCache(key, data, run, seq) {
      var verKey = key + '::version';
      if (run !== null) {
        try {
          var ver = JSON.parse(this.get(verKey) || 'null');
          if (ver && ver.run === run && typeof ver.seq === 'number' && ver.seq > seq) return 'behind';
        } catch (_) {
          /* unreadable: overwrite */
        }
      }
      if (!this.set(key, JSON.stringify({ v: CACHE_VERSION, data: data }))) return 'full';
      if (run !== null) this.set(verKey, JSON.stringify({ run: run, seq: seq }));
      else this.remove(verKey);
      return 'saved';
    }

    removeCache(key) {
      this.remove(key);
      this.remove(key + '::version');
    }

    /** A tab's stored outbox record, or null (an unreadable one is removed). */
    readOutbox(key) {
      var raw = this.get(key);
      if (raw == null) return null;
      try {
        var rec = JSON.parse(raw);
        if (rec && rec.v === 1 && Array.isArray(rec.entries) && typeof rec.owner === 'string') return rec;
      } catch (_) {
        /* fall through */
      }
      this.remove(key);
      return null;
    }

    /** The scope's client id, created once and kept (a full storage: a fresh one, not kept). */
    clientId(scopeKey) {
      var key = scopeKey + '::cid';
      var got = this.get(key);
      if (typeof got === 'string' && /^[a-z0-9]{8,64}$/.test(got)) return got;
      var cid = shortId(20);
      this.set(key, cid);
      return cid;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The connection: backoff, one socket, one state, one teardown
  // ---------------------------------------------------------------------------------------------

  /**
   * Reconnect delays: jittered exponential backoff (a random 50-100 % of each step), longer after
   * "busy" and "rate limit" closes. Only a connection that lasted resets it, so a relay or proxy
   * that closes right after `hello` is retried ever more slowly.
   */
  class Backoff {
    constructor(opts) {
      this._opts = opts;
      this.attempt = 0;
      this._openedAt = 0;
    }

    opened() {
      this._openedAt = now();
    }

    ended() {
      if (this._openedAt && now() - this._openedAt >= STABLE_CONNECTION_MS) this.attempt = 0;
      this._openedAt = 0;
    }

    reset() {
      this.attempt = 0;
    }

    next(kind) {
      var o = this._opts;
      var max = Math.max(o.maxReconnectDelayMs, o.minReconnectDelayMs);
      var d = Math.min(max, o.minReconnectDelayMs * Math.pow(2, this.attempt));
      this.attempt = Math.min(this.attempt + 1, 30);
      if (kind === 'busy') d = Math.min(max * 4, Math.max(d * 4, 2000));
      else if (kind === 'rate') d = Math.max(d, 1000);
      return Math.round(d * (0.5 + Math.random() * 0.5));
    }
  }

  /**
   * One WebSocket at a time in one explicit state: 'idle' (none; a retry may be scheduled),
   * 'connecting' (opening, no `hello` yet), 'open' (after `hello`) or 'closed' (for good). Every
   * end, whoever causes it, goes through `end`. It checks liveness while open and knows nothing
   * else of the protocol; the client plugs in through hooks:
   *   url()                          the URL of the next attempt
   *   socket(url)                    a new WebSocket (or a follower's TabLink); null: none
   *   opened()                       the socket opened (before `hello`)
   *   frame(data)                    a frame arrived
   *   check()                        each second while open: 'ok', 'ping' or 'dead'
   *   ended(code, reason, how, wasOpen)   after every end
   *   retry()                        a scheduled retry is due
   */
  class Connection {
    constructor(opts, hooks) {
      this._opts = opts;
      this._hooks = hooks;
      this.state = 'idle';
      this.ws = null;
      this.backoff = new Backoff(opts);
      this.lastHeard = 0;
      this.pingSentAt = 0;
      this._retry = null;
      this._watchdog = null;
    }

    get isOpen() {
      return this.state === 'open';
    }

    get retryPending() {
      return this._retry !== null;
    }

    /** The "socket" is a link through the leader tab, not a WebSocket of our own. */
    get linked() {
      return this.ws instanceof TabLink;
    }

    /** Opens a socket if there is none; returns its URL, or null. */
    connect() {
      this._cancelRetry();
      if (this.state !== 'idle' || this.ws) return null;
      var url = this._hooks.url();
      var ws;
      try {
        ws = this._hooks.socket(url);
      } catch (err) {
        this.end(1006, String((err && err.message) || err), 'retry');
        return null;
      }
      if (!ws) return null;
      this.ws = ws;
      this.state = 'connecting';
      var self = this;
      ws.onopen = function () {
        if (self.ws === ws) self._hooks.opened();
      };
      ws.onmessage = function (ev) {
        if (self.ws !== ws) return;
        self.lastHeard = now();
        self.pingSentAt = 0; // any frame proves the connection alive
        self._hooks.frame(ev && ev.data);
      };
      ws.onerror = noop;
      ws.onclose = function (ev) {
        if (self.ws === ws) self.end(ev && typeof ev.code === 'number' ? ev.code : 1006, (ev && ev.reason) || '', 'retry');
      };
      return url;
    }

    /** `hello` arrived: the connection is open; the watchdog starts. */
    markOpen() {
      this.state = 'open';
      this.backoff.opened();
      this.lastHeard = now();
      this.pingSentAt = 0;
      this._arm();
    }

    send(text) {
      if (!this.ws) return false;
      try {
        this.ws.send(text);
        return true;
      } catch (_) {
        return false; // the close event follows
      }
    }

    /** v2: asks the relay for a `pong` (any frame will do as the answer). */
    ping() {
      if (this.state !== 'open' || this.pingSentAt) return;
      this.pingSentAt = now();
      this.send('{"type":"ping"}');
    }

    /**
     * The one way a connection ends. `how`: 'retry' (the socket closed or failed; the owner
     * reports it and may schedule a retry), 'restart' (we gave up on a live-looking socket: close
     * it, reconnect at once), 'quiet' (close it; the caller connects again itself), 'stop' (for good).
     */
    end(code, reason, how) {
      var ws = this.ws;
      var wasOpen = this.state === 'open';
      this.ws = null;
      this.state = how === 'stop' ? 'closed' : 'idle';
      this._cancelRetry();
      clearTimeout(this._watchdog);
      this._watchdog = null;
      this.pingSentAt = 0;
      this.backoff.ended();
      if (ws && how !== 'retry') {
        ws.onopen = ws.onmessage = ws.onclose = null;
        // Not null: a socket closed while it is still opening reports an error, and Node's `ws`
        // throws one that has no listener (browsers only fire the event).
        ws.onerror = function () {};
        try {
          ws.close(how === 'restart' ? 4000 : 1000);
        } catch (_) {
          /* ignore */
        }
      }
      if (how === 'restart') this.retryIn(0);
      this._hooks.ended(code, reason, how, wasOpen);
    }

    retryIn(ms) {
      this._cancelRetry();
      var self = this;
      this._retry = timer(function () {
        self._retry = null;
        self._hooks.retry();
      }, ms);
    }

    _cancelRetry() {
      clearTimeout(this._retry);
      this._retry = null;
    }

    /**
     * Each second while open: a ping unanswered for `pingTimeoutMs` ends the socket (it looks
     * open but is dead: sleep, a network change) and reconnects at once; the owner decides when
     * to ping.
     */
    _arm() {
      clearTimeout(this._watchdog);
      var self = this;
      this._watchdog = timer(function () {
        self._watchdog = null;
        if (self.state !== 'open') return;
        if (self.pingSentAt) {
          if (now() - self.pingSentAt > self._opts.pingTimeoutMs) return self.end(4000, 'no answer from the relay', 'restart');
        } else {
          var verdict = self._hooks.check();
          if (verdict === 'dead') return self.end(4000, 'write not echoed', 'restart');
          if (verdict === 'ping') self.ping();
        }
        if (self.state === 'open') self._arm();
      }, WATCHDOG_MS, true);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The client
  // ---------------------------------------------------------------------------------------------

  class Aether {
    /**
     * @param {string} url  WebSocket URL of the relay, e.g. `ws://127.0.0.1:8211/ws`.
     * @param {object} [opts] see README.md / aether.d.ts.
     */
    constructor(url, opts) {
      if (typeof url !== 'string' || !url) throw new TypeError('Aether: url must be a non-empty string');
      opts = opts || {};
      this.url = url;
      var g = typeof globalThis !== 'undefined' ? globalThis : {};
      var o = (this._opts = {});
      Object.keys(DEFAULTS).forEach(function (k) {
        o[k] = DEFAULTS[k];
      });
      o.autoReconnect = opts.autoReconnect !== false;
      o.persist = opts.persist !== false;
      o.maxReconnectDelayMs = opts.maxReconnectDelayMs || DEFAULTS.maxReconnectDelayMs;
      [
        'minReconnectDelayMs', 'sendBurst', 'sendRatePerSecond', 'maxKeyBytes', 'maxValueBytes',
        'supersedeWindowMs', 'maxTrackedWrites', 'outboxStaleMs', 'ackTimeoutMs', 'pingIntervalMs',
        'pingTimeoutMs',
      ].forEach(function (k) {
        if (typeof opts[k] === 'number' && opts[k] >= 0) o[k] = opts[k];
      });
      o.protocol = opts.protocol === 1 ? 1 : 2;
      if (opts.room !== undefined && opts.room !== null && (typeof opts.room !== 'string' || !opts.room)) {
        throw new TypeError('Aether: room must be a non-empty string (omit it for the default room)');
      }
      /** The room (null: the default room). */
      this._room = typeof opts.room === 'string' ? opts.room : null;
      // `token` (a string, or a function giving one or a promise of one); `authToken` is its
      // older name (a string), used when `token` is absent.
      var token = opts.token !== undefined && opts.token !== null ? opts.token : opts.authToken;
      /** The token function, or null with a fixed token or none. */
      this._tokenFn = typeof token === 'function' ? token : null;
      o.authToken = typeof token === 'string' && token ? token : null;
      /** A token fetch in flight ({} identifying it), or null. */
      this._tokenWait = null;
      /** The current `authToken` came from the function for the connect about to happen. */
      this._freshToken = false;
      /** The first token is still coming (a promise): the scope does not name the user yet. */
      this._awaitingUser = false;
      /** A 4401 was already answered by one retry with a fresh token (reset by `hello`). */
      this._authRetried = false;
      this._refreshTimer = null;
      this._exp = null;
      this._user = null;
      this._access = null;
      var firstToken = null;
      if (this._tokenFn) {
        firstToken = this._callTokenFn();
        if (typeof firstToken === 'string') {
          o.authToken = firstToken;
          this._freshToken = true;
          firstToken = null;
        } else {
          this._awaitingUser = true;
        }
      }
      this._explicitKey = typeof opts.cacheKey === 'string' && opts.cacheKey ? opts.cacheKey : null;
      this._cacheKey = scopeKey(url, this._explicitKey, o.authToken, this._room);
      this._BC = 'BroadcastChannel' in opts ? opts.BroadcastChannel : g.BroadcastChannel;
      var nav = g.navigator;
      this._locks = 'locks' in opts ? opts.locks || null : (nav && nav.locks && typeof nav.locks.request === 'function' ? nav.locks : null);
      var storage = null;
      if (o.persist) {
        try {
          storage = 'storage' in opts ? opts.storage : g.localStorage || null;
        } catch (_) {
          storage = null; // access can throw (sandboxed iframes, disabled storage)
        }
      }
      /** Null without persistence. */
      this._store = storage ? new LocalStore(storage) : null;

      // Visible state = the relay's state (`_base`) with pending local writes laid over it.
      this._state = new Map();
      this._base = new Map();
      /** key -> {own, tab, n, cid, del, value, at, settled} */
      this._overlay = new Map();
      /** Pending writes (see Outbox). */
      this._outbox = new Outbox();
      /** key -> {n, del, value, stamp, seq, run, at}: this instance's latest write per key. */
      this._tracked = new Map();

      this._keyWatchers = new Map();
      this._anyWatchers = new Set();
      this._statusWatchers = new Set();
      this._supersedeWatchers = new Set();
      this._presenceWatchers = new Set();
      this._leaveWatchers = new Set();
      this._errorWatchers = new Set();
      this._readyResolvers = [];

      this._tabId = randomId();
      this._hasSnapshot = false;
      this._closed = false;
      this._fatal = false;

      // Connection (its state, socket, backoff and watchdog: see Connection).
      var self = this;
      this._WS = 'WebSocket' in opts ? opts.WebSocket : g.WebSocket;
      this._connection = new Connection(o, {
        url: function () { return self._wsUrl(); },
        socket: function (wsUrl) { return self._socket(wsUrl); },
        opened: function () { self._onOpen(); },
        frame: function (data) { self._onFrame(data); },
        check: function () { return self._checkAlive(); },
        ended: function (code, reason, how, wasOpen) { self._onEnded(code, reason, how, wasOpen); },
        retry: function () { self._connect(); },
      });
      this._proto = null;
      this._myId = null;
      this._myColor = null;
      this._node = null;
      this._myIds = new Set();
      this._status = { connected: false, protocol: null, code: null, reason: null, retryInMs: null, fatal: false };
      this._sentSomething = false;
      this._tokens = 0;
      this._tokensAt = 0;
      this._rate = o.sendRatePerSecond || Infinity; // 0: no pacing
      this._pumpTimer = null;

      // v2 resume and ordering: the relay run, the last sequence number applied, per-key versions.
      this._run = null;
      this._seq = 0;
      this._resumable = false;
      this._resumeSince = null;
      this._floorSeq = 0;
      this._keySeq = new Map();
      this._keyStamp = new Map();

      // Persistence.
      this._cacheOk = true;
      this._saveTimer = null;
      this._outboxSaveQueued = false;
      this._outboxFull = false;
      this._savedIds = null;
      this._beatTimer = null;
      this._probes = new Map();
      this._hidden = false;

      // Same-origin tabs (see Tabs): a closed tab's outbox is adopted by exactly one sibling once
      // its lock is free; the leader alone re-posts relay frames and writes the state cache.
      this._tabs = null;
      this._bcSource = null;
      this._bcSourceAt = 0;
      this._peerTimer = null;
      /** Writes a closing sibling handed over in its `bye` (storage was full), by tab. */
      this._handed = new Map();
      // Cursors in a shared scope: this tab's last one (sent again on every new connection) and
      // the siblings' shown here from the channel (tab -> the cursor id shown), which the relay
      // never sends back to the browser whose socket carried them.
      this._cursor = null;
      this._siblingCursors = new Map();
      // The leader of a shared scope: the follower tabs linked to it, the relay's hello for them,
      // and the followers' writes in flight on our socket (ref -> key; key -> how many), whose
      // echoes (our connection id as origin) must not settle our own writes to the same key.
      this._followers = new Set();
      this._helloFrame = null;
      this._fwdRefs = new Map();
      this._fwdKeys = new Map();

      this._loadCache();
      this._enterScope();
      this._scanOrphans();
      this._listenPageLifecycle();
      if (firstToken) this._fetchToken(firstToken);
      else this._connect();
      this._post({ type: 'snapshot-request' });
    }

    /** Opens what lives under the current cache key: client id, outbox key, tab channel, locks. */
    _enterScope() {
      this._outboxKey = this._cacheKey + '::outbox::' + this._tabId;
      this._cid = this._store ? this._store.clientId(this._cacheKey) : shortId(20);
      var self = this;
      var tabs = new Tabs(this._tabId, this._cacheKey, this._BC, this._locks, {
        message: function (msg) { if (!self._closed) self._onChannel(msg); },
        locked: function () {
          if (self._outbox.size) self._saveOutbox(false); // it names the lock now
        },
        gone: function (tab) {
          self._onSiblingGone(tab);
          self._siblingCursorGone(tab, true);
        },
        leading: function () {
          self._scheduleSave();
          self._takeSocket();
        },
        deposed: function () { self._giveUpSocket(); },
        leaderSeen: function (open) { if (open) self._followNow(); },
        open: function () { return self._connection.isOpen && !self._connection.linked; },
      });
      this._tabs = tabs;
    }

    /** Closes what `_enterScope` opened. */
    _leaveScope() {
      if (this._tabs) this._tabs.close();
      this._handed.clear();
    }

    /** The BroadcastChannel of this scope, or null. */
    get _bc() {
      return this._tabs ? this._tabs.channel : null;
    }

    /** This tab leads its scope (re-posts relay frames, writes the cache). */
    get _leader() {
      return !!this._tabs && this._tabs.leader;
    }

    /** What the next connection attempt uses: a follower links to the leader tab, others a socket. */
    _socket(url) {
      if (typeof this._WS !== 'function') return null;
      if (this._tabs && this._tabs.follower) return new TabLink(this._tabs);
      return new this._WS(url);
    }

    /** This tab now leads a shared scope: the scope's socket is ours to open. */
    _takeSocket() {
      if (this._closed || !this._tabs || !this._tabs.shared) return;
      var c = this._connection;
      if (c.linked) c.end(1001, 'this tab leads now', 'quiet');
      if (c.state === 'idle') this._connect();
    }

    /** Another tab leads now: close our socket (a frozen leader that woke up) and follow it. */
    _giveUpSocket() {
      if (this._closed || !this._tabs || !this._tabs.shared) return;
      var c = this._connection;
      if (c.ws && !c.linked) {
        c.end(1001, 'another tab leads', 'quiet');
        this._connect();
      }
    }

    /** The leader's socket is open: a follower waiting to retry links at once. */
    _followNow() {
      var c = this._connection;
      if (!this._closed && !this._fatal && c.state === 'idle' && (this._awaitLeader || (this._opts.autoReconnect && c.retryPending))) this._connect();
    }

    /** A sibling's lock was granted to us: it is gone; take over its pending writes. */
    _onSiblingGone(tab) {
      var handed = this._handed.get(tab);
      this._handed.delete(tab);
      if (!this._adopt(this._cacheKey + '::outbox::' + tab) && handed) this._adoptEntries(handed);
    }

    // ----- public API: data ----------------------------------------------------------------

    /** Sets `key` to `value` (`undefined` deletes; `null` is a value). Returns a write handle. */
    set(key, value) {
      if (value === undefined) return this.delete(key);
      return this._write('set', key, value);
    }

    /** Deletes `key`. Returns a write handle. */
    delete(key) {
      return this._write('delete', key, undefined);
    }

    get(key) {
      return this._state.get(String(key));
    }

    has(key) {
      return this._state.has(String(key));
    }

    keys() {
      return Array.from(this._state.keys());
    }

    snapshot() {
      var out = {};
      this._state.forEach(function (v, k) {
        out[k] = v;
      });
      return out;
    }

    /** Resolves when every pending write (to `key`, or to any key) is durable; rejects if one failed. */
    whenDurable(key) {
      var k = key === undefined ? null : String(key);
      var list = [];
      var closed = this._closed;
      this._outbox.entries.forEach(function (e) {
        if (k !== null && e.key !== k) return;
        var w = new AetherWrite(e.key, e.op, e.value);
        if (closed) w._fail('closed');
        else e.writes.push(w);
        list.push(w.durable);
      });
      return Promise.all(list).then(noop);
    }

    /** Number of writes (to `key`, or in total) not yet acknowledged by the relay. */
    pendingWrites(key) {
      var k = key === undefined ? null : String(key);
      return this._outbox.count(k);
    }

    // ----- public API: events --------------------------------------------------------------

    on(key, cb) {
      requireFunction(cb, 'on');
      var k = String(key);
      var set = this._keyWatchers.get(k);
      if (!set) this._keyWatchers.set(k, (set = new Set()));
      set.add(cb);
      var self = this;
      return function unsubscribe() {
        set.delete(cb);
        if (set.size === 0 && self._keyWatchers.get(k) === set) self._keyWatchers.delete(k);
      };
    }

    onAny(cb) {
      requireFunction(cb, 'onAny');
      return subscribe(this._anyWatchers, cb);
    }

    /** `cb(connected, status)`: now, then after every `hello` (true) and every close (false). */
    onStatus(cb) {
      requireFunction(cb, 'onStatus');
      callSafely(cb, [this._connected, this.status]);
      return subscribe(this._statusWatchers, cb);
    }

    /** `cb(key, attempted, actual)` when one of this client's acknowledged writes lost (v2 only). */
    onSupersede(cb) {
      requireFunction(cb, 'onSupersede');
      return subscribe(this._supersedeWatchers, cb);
    }

    /** `cb({type, code, reason, fatal, message})` on auth failure, rate-limit and oversize closes. */
    onError(cb) {
      requireFunction(cb, 'onError');
      return subscribe(this._errorWatchers, cb);
    }

    onPresence(cb) {
      requireFunction(cb, 'onPresence');
      return subscribe(this._presenceWatchers, cb);
    }

    onPresenceLeave(cb) {
      requireFunction(cb, 'onPresenceLeave');
      return subscribe(this._leaveWatchers, cb);
    }

    ready() {
      if (this._hasSnapshot) return Promise.resolve();
      var self = this;
      return new Promise(function (resolve) {
        self._readyResolvers.push(resolve);
      });
    }

    get isReady() {
      return this._hasSnapshot;
    }

    get connected() {
      return this._connection.isOpen;
    }

    get _connected() {
      return this._connection.isOpen;
    }

    get clientId() {
      return this._myId;
    }

    get clientColor() {
      return this._myColor;
    }

    /**
     * The id this tab's cursor has in other tabs' `onPresence`: the connection id, or, when the
     * browser's tabs share one socket, `<connection id>:<tab id>` (null while disconnected).
     */
    get cursorId() {
      if (!this._myId) return null;
      return this._tabCursors ? this._myId + ':' + this._tabId : this._myId;
    }

    /** 2 with aether-actix, 1 with an upstream server, null before the first hello. */
    get protocol() {
      return this._proto;
    }

    /** v2: the relay's node id from hello. */
    get node() {
      return this._node;
    }

    /** The room (null: the default room). */
    get room() {
      return this._room;
    }

    /** v2 with a JWT: the token's user (`sub`) from `hello`; null otherwise. */
    get user() {
      return this._user;
    }

    /** 'read' or 'write' from the last `hello`/`auth_ok` (v2; 'write' without a JWT); null before. */
    get access() {
      return this._access;
    }

    get status() {
      var s = this._status;
      return {
        connected: this._connected,
        protocol: this._proto,
        clientId: this._myId,
        code: s.code,
        reason: s.reason,
        retryInMs: s.retryInMs,
        fatal: s.fatal,
        pending: this._outbox.size,
      };
    }

    sendPresence(x, y) {
      x = x | 0;
      y = y | 0;
      var tabbed = this._tabCursors;
      if (tabbed) this._cursor = { x: x, y: y };
      if (this._connected && !this._outbox.hasQueued() && this._takeToken()) this._sendText(this._presenceText(x, y));
      if (this._myId) {
        var msg = { type: 'presence', id: this._myId, color: this._myColor, x: x, y: y, user: this._user };
        if (tabbed) {
          msg.id = this._myId + ':' + this._tabId;
          msg.tab = this._tabId;
        }
        this._post(msg);
      }
    }

    /**
     * In a shared scope (one socket for the browser's tabs) each tab's cursor carries its tab id:
     * the relay shows it as the cursor `<connection id>:<tab id>`, to everyone but this browser,
     * whose tabs show each other's from the channel.
     */
    get _tabCursors() {
      return !!this._tabs && this._tabs.shared;
    }

    _presenceText(x, y) {
      var tab = this._tabCursors ? ',"tab":' + JSON.stringify(this._tabId) : '';
      return '{"type":"presence","x":' + x + ',"y":' + y + tab + '}';
    }

    /** This tab goes away: its cursor leaves, at the relay (through the leader) and in its siblings. */
    _cursorGone() {
      if (!this._cursor) return;
      this._cursor = null;
      if (this._connected) {
        try {
          this._sendText('{"type":"presence-leave","tab":' + JSON.stringify(this._tabId) + '}');
        } catch (_) {
          /* the socket is going anyway, and its end takes every cursor it carried */
        }
      }
      if (this._myId) this._post({ type: 'presence-leave', id: this._myId + ':' + this._tabId, tab: this._tabId });
    }

    /**
     * A sibling's cursor leaves here; with `relay` (the sibling is gone: its lock was free, so it
     * may have crashed without a word) also at the relay, through the shared connection that
     * carried it (the relay ignores a tab it does not show).
     */
    _siblingCursorGone(tab, relay) {
      if (relay && this._connected && this._tabCursors) this._sendText('{"type":"presence-leave","tab":' + JSON.stringify(tab) + '}');
      var id = this._siblingCursors.get(tab);
      if (id === undefined) return;
      this._siblingCursors.delete(tab);
      this._leaveWatchers.forEach(function (cb) { callSafely(cb, [id]); });
    }

    /** Forgets the cached state (not the outbox of pending writes). */
    clearCache() {
      if (this._store) this._store.removeCache(this._cacheKey);
    }

    /**
     * Disconnects for good. Pending writes stay in localStorage, marked released, so the next
     * instance (a reload, another tab) sends them; their `durable` promises reject with 'closed'.
     */
    close() {
      if (this._closed) return;
      this._closed = true;
      this._tokenWait = null;
      clearTimeout(this._beatTimer);
      clearTimeout(this._peerTimer);
      this._probes.forEach(function (t) { clearTimeout(t); });
      this._probes.clear();
      this._cursorGone();
      this._connection.end(1000, '', 'stop');
      if (this._saveTimer) {
        clearTimeout(this._saveTimer);
        this._saveTimer = null;
        this._saveCache();
      }
      this._handOver();
      this._leaveScope();
      if (this._unlisten) this._unlisten();
      this._outbox.entries.forEach(function (e) {
        e.writes.forEach(function (w) { w._fail('closed'); });
        e.writes = [];
      });
    }

    /**
     * Connects again at once: after an auth failure (optionally with a new `token`, a string or a
     * function; `authToken` is its older name), or to skip the current backoff wait. A live
     * connection is kept unless the token changes.
     */
    reconnect(opts) {
      if (this._closed) return;
      var changed = false;
      var given = opts ? (opts.token !== undefined && opts.token !== null ? opts.token : opts.authToken) : undefined;
      if (typeof given === 'function') {
        changed = true;
        this._tokenFn = given;
        this._freshToken = false;
        this._tokenWait = null;
      } else if (typeof given === 'string') {
        var token = given || null;
        changed = token !== this._opts.authToken || this._tokenFn !== null;
        this._tokenFn = null;
        this._tokenWait = null;
        this._useToken(token);
      }
      this._fatal = false;
      this._authRetried = false;
      this._connection.backoff.reset();
      if ((this._connection.ws || this._tokenWait) && !changed) return;
      this._connection.end(1000, '', 'quiet');
      this._connect();
    }

    /**
     * `token` is the one to present from now on. A token of another user switches the storage
     * scope (see `_switchScope`); the first token of a function that answered with a promise only
     * names the user of the writes made meanwhile, which move along with it.
     */
    _useToken(token) {
      this._opts.authToken = token;
      var carry = this._awaitingUser;
      this._awaitingUser = false;
      var key = scopeKey(this.url, this._explicitKey, token, this._room);
      if (key !== this._cacheKey) this._switchScope(key, carry);
    }

    /** Calls the token function: a string now, or a promise of one (rejected for anything else). */
    _callTokenFn() {
      var got;
      try {
        got = this._tokenFn();
      } catch (err) {
        return Promise.reject(err);
      }
      if (typeof got === 'string' && got) return got;
      return Promise.resolve(got).then(function (t) {
        if (typeof t !== 'string' || !t) throw new TypeError('the token function gave no token');
        return t;
      });
    }

    /**
     * Asks the token function (or waits for `pending`, a first answer) and connects with its
     * token. A failure counts as a failed attempt: reported, and retried after the backoff.
     */
    _fetchToken(pending) {
      if (this._tokenWait) return;
      var self = this;
      var got = pending || this._callTokenFn();
      var ticket = (this._tokenWait = {});
      Promise.resolve(got).then(function (token) {
        if (self._tokenWait !== ticket) return;
        self._tokenWait = null;
        if (self._closed || self._fatal) return;
        self._useToken(token);
        self._freshToken = true;
        self._connect();
      }, function (err) {
        if (self._tokenWait !== ticket) return;
        self._tokenWait = null;
        if (self._closed || self._fatal) return;
        var reason = 'token unavailable: ' + String((err && err.message) || err);
        var delay = null;
        if (self._opts.autoReconnect) {
          delay = self._connection.backoff.next('normal');
          self._connection.retryIn(delay);
        }
        self._status = { connected: false, protocol: self._proto, code: null, reason: reason, retryInMs: delay, fatal: false };
        self._notifyStatus();
        self._emitError({ type: 'auth', code: null, reason: reason, fatal: false, message: 'the token function failed; trying again later' });
      });
    }

    /**
     * v2 `hello`/`auth_ok` said when the token expires: ask the function for a new one before
     * (30 s before, or at 80 % of a short remaining life) and present it in an `auth` frame on the
     * live connection. Without a function, or if it fails, nothing happens: the relay closes at
     * expiry (4401 "token expired") and the reconnect asks the function again.
     */
    _scheduleRefresh(exp) {
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      this._exp = typeof exp === 'number' && isFinite(exp) ? exp : null;
      if (!this._tokenFn || this._exp === null || this._proto !== 2) return;
      if (this._connection.linked) return; // the leader refreshes the token of its connection
      var self = this;
      var ws = this._connection.ws;
      this._refreshTimer = timer(function () {
        self._refreshTimer = null;
        if (self._closed || self._connection.ws !== ws || !self._connected || !self._tokenFn) return;
        Promise.resolve(self._callTokenFn()).then(function (token) {
          if (self._closed || self._connection.ws !== ws || !self._connected) return;
          self._opts.authToken = token;
          self._sendText(JSON.stringify({ type: 'auth', token: token }));
        }, function (err) {
          if (typeof console !== 'undefined' && console.warn) console.warn('[aether] token refresh failed:', err);
        });
      }, refreshDelay(this._exp * 1000 - now()), true);
    }

    /**
     * Another user (a new token naming another `sub`): nothing of the previous user's stays in
     * this instance. Its pending writes stay in storage under its own scope, for its next
     * session; their handles reject with 'user-changed'. The new user's cache and orphaned
     * writes are loaded as at construction.
     */
    _switchScope(key, carry) {
      if (this._saveTimer) {
        clearTimeout(this._saveTimer);
        this._saveTimer = null;
        this._saveCache();
      }
      if (carry) {
        // The writes were made before the user was known; they are this user's: they move.
        if (this._store) this._store.remove(this._outboxKey);
      } else {
        this._saveOutbox(true);
      }
      this._post({ type: 'bye', pending: false });
      this._leaveScope();
      clearTimeout(this._beatTimer);
      this._beatTimer = null;
      if (!carry) {
        this._outbox.clear().forEach(function (e) {
          e.writes.forEach(function (w) { w._fail('user-changed'); });
        });
        this._overlay.clear();
        this._tracked.clear();
      }
      this._myIds.clear(); // the previous user's connections are not "mine" for the next one
      this._bcSource = null;
      this._cacheKey = key;
      this._cacheOk = true;
      this._outboxFull = false;
      this._savedIds = null;
      this._setVersion(null);
      this._keyStamp.clear();
      this._hasSnapshot = false;
      this._applyWhole(this._readCache() || {});
      if (this._readCache()) this._markReady();
      this._enterScope();
      if (carry && this._outbox.size) this._saveOutbox(false);
      this._scanOrphans();
      this._post({ type: 'snapshot-request' });
    }

    // ----- writes and the outbox -----------------------------------------------------------

    _write(op, key, value) {
      var k = String(key);
      var w = new AetherWrite(k, op, value);
      if (this._closed) {
        w._fail('closed');
        return w;
      }
      var reason = this._checkKey(k);
      var norm;
      if (!reason && op === 'set') {
        var text;
        try {
          text = JSON.stringify(value);
        } catch (_) {
          text = undefined;
        }
        if (text === undefined) reason = 'not_json';
        else if (this._opts.maxValueBytes && utf8Length(text) > this._opts.maxValueBytes) reason = 'bad_value';
        else {
          norm = JSON.parse(text);
          if (depthExceeds(norm, MAX_VALUE_DEPTH)) reason = 'bad_value';
        }
      }
      if (reason) {
        w._fail(reason);
        if (typeof console !== 'undefined' && console.warn) console.warn('[aether] write to "' + k + '" refused: ' + reason);
        return w;
      }
      w.value = norm;
      var entry = this._outbox.add(op, k, norm, now());
      entry.writes.push(w);
      this._track(k, entry);
      this._overlay.set(k, { own: true, n: entry.n, del: op === 'delete', value: norm });
      this._refresh(k);
      this._post({ type: op, key: k, value: norm, local: true, n: entry.n, cid: this._myId, run: this._run, seq: this._seq });
      if (this._hidden) this._handOver(); // the page is going away: save and hand over now
      else this._queueOutboxSave();
      this._pump();
      return w;
    }

    _checkKey(k) {
      if (!k) return 'bad_key';
      if (this._opts.maxKeyBytes && utf8Length(k) > this._opts.maxKeyBytes) return 'bad_key';
      return null;
    }

    _takeToken() {
      if (this._rate === Infinity) return true;
      var t = now();
      var burst = Math.max(1, this._opts.sendBurst);
      this._tokens = Math.min(burst, this._tokens + ((t - this._tokensAt) * this._rate) / 1000);
      this._tokensAt = t;
      if (this._tokens < 1) return false;
      this._tokens -= 1;
      return true;
    }

    /** Sends queued writes while the rate budget allows; schedules itself for the rest. */
    _pump() {
      if (!this._connected || this._pumpTimer) return;
      var entries = this._outbox.entries;
      for (var i = 0; i < entries.length; i++) {
        var e = entries[i];
        if (e.status !== 'queued') continue;
        if (!this._takeToken()) {
          var self = this;
          var wait = Math.max(1, Math.ceil(((1 - this._tokens) * 1000) / Math.max(this._rate, 0.001)));
          this._pumpTimer = timer(function () {
            self._pumpTimer = null;
            self._pump();
          }, wait);
          return;
        }
        var msg = e.op === 'set' ? { type: 'set', key: e.key, value: e.value } : { type: 'delete', key: e.key };
        if (this._proto === 2) msg.ref = e.id;
        this._outbox.markSent(e);
        this._sendText(JSON.stringify(msg));
      }
    }

    _sendText(text) {
      if (this._connection.send(text)) this._sentSomething = true;
    }

    /** The write `entry` is durable (echo or ack): drop it from the outbox and settle its handles. */
    _confirm(entry, stamp, seq) {
      if (!this._outbox.remove(entry)) return;
      var tracked = this._tracked.get(entry.key);
      var lostAlready = false;
      if (tracked && tracked.n === entry.n) {
        if (this._proto === 2 && typeof stamp === 'string') {
          tracked.stamp = stamp;
          tracked.seq = typeof seq === 'number' ? seq : null;
          tracked.run = this._run;
          tracked.at = now();
          // A repeat answered with its original ack: a later write may already have replaced it,
          // seen as a greater stamp, or (the write being older than the last snapshot or delta
          // we applied) as another value in the relay's state.
          var known = this._keyStamp.get(entry.key);
          var base = this._base.has(entry.key);
          var differs = tracked.del ? base : !base || !jsonEqual(this._base.get(entry.key), tracked.value);
          lostAlready = (typeof known === 'string' && known > stamp) ||
            (typeof seq === 'number' && this._resumable && seq <= this._floorSeq && differs);
        } else {
          this._tracked.delete(entry.key); // v1: no stamps, so no supersede tracking
        }
      }
      entry.writes.forEach(function (w) { w._succeed(stamp, seq); });
      this._settleOverlay(entry, false);
      this._queueOutboxSave();
      if (lostAlready) this._fireSupersede(entry.key, tracked, this._base.get(entry.key));
    }

    /** The relay refused the write `entry`: it will never apply, so undo it locally. */
    _refuse(entry, reason) {
      if (!this._outbox.remove(entry)) return;
      var tracked = this._tracked.get(entry.key);
      if (tracked && tracked.n === entry.n) this._tracked.delete(entry.key);
      entry.writes.forEach(function (w) { w._fail(reason); });
      this._settleOverlay(entry, true);
      this._queueOutboxSave();
    }

    _settleOverlay(entry, failed) {
      var o = this._overlay.get(entry.key);
      if (o && o.own && o.n === entry.n) {
        this._recomputeOverlay(entry.key);
        this._refresh(entry.key);
      }
      this._post({ type: 'settled', key: entry.key, n: entry.n, failed: failed });
    }

    /** After an overlay entry went away: the latest own pending write to `key`, if any, shows. */
    _recomputeOverlay(key) {
      this._overlay.delete(key);
      var e = this._outbox.latest(key);
      if (e) this._overlay.set(key, { own: true, n: e.n, del: e.op === 'delete', value: e.value });
    }

    // ----- supersede -----------------------------------------------------------------------

    _track(key, entry) {
      this._tracked.delete(key);
      this._tracked.set(key, { n: entry.n, del: entry.op === 'delete', value: entry.value, stamp: null, seq: null, run: null, at: 0 });
      var max = this._opts.maxTrackedWrites;
      while (this._tracked.size > max) this._tracked.delete(this._tracked.keys().next().value);
    }

    /** The acknowledged tracked write to `key`, if still within the window. */
    _ackedTracked(key) {
      var t = this._tracked.get(key);
      if (!t || t.stamp === null) return null;
      var win = this._opts.supersedeWindowMs;
      if (win > 0 && now() - t.at > win) {
        this._tracked.delete(key);
        return null;
      }
      return t;
    }

    _fireSupersede(key, tracked, actual) {
      this._tracked.delete(key);
      var attempted = tracked.del ? undefined : tracked.value;
      this._supersedeWatchers.forEach(function (cb) {
        callSafely(cb, [key, attempted, actual]);
      });
    }

    // ----- state application ---------------------------------------------------------------

    /** Recomputes the visible value of `key`; fires watchers and schedules a save if it changed. */
    _refresh(key) {
      var o = this._overlay.get(key);
      var has, val;
      if (o) {
        has = !o.del;
        val = o.value;
      } else {
        has = this._base.has(key);
        val = this._base.get(key);
      }
      var had = this._state.has(key);
      var old = this._state.get(key);
      if (had === has && (!has || jsonEqual(old, val))) return false;
      if (has) this._state.set(key, val);
      else this._state.delete(key);
      var next = has ? val : undefined;
      var prev = had ? old : undefined;
      var watchers = this._keyWatchers.get(key);
      if (watchers) {
        Array.from(watchers).forEach(function (cb) { callSafely(cb, [next, prev]); });
      }
      Array.from(this._anyWatchers).forEach(function (cb) { callSafely(cb, [key, next, prev]); });
      this._scheduleSave();
      return true;
    }

    _setBase(key, del, value) {
      if (del) this._base.delete(key);
      else this._base.set(key, value);
    }

    /** A whole state (server snapshot or a sibling's) replaces the base; pending writes stay on top. */
    _applyWhole(data) {
      var keys = new Set();
      this._base.forEach(function (_, k) { keys.add(k); });
      this._state.forEach(function (_, k) { keys.add(k); });
      this._base = new Map();
      for (var k in data) {
        if (Object.prototype.hasOwnProperty.call(data, k)) {
          this._base.set(k, data[k] === undefined ? null : data[k]);
          keys.add(k);
        }
      }
      var self = this;
      keys.forEach(function (key) { self._refresh(key); });
    }

    _markReady() {
      if (this._hasSnapshot) return;
      this._hasSnapshot = true;
      var resolvers = this._readyResolvers;
      this._readyResolvers = [];
      resolvers.forEach(function (r) { r(); });
    }

    _onSnapshot(msg) {
      var data = msg.data && typeof msg.data === 'object' && !Array.isArray(msg.data) ? msg.data : {};
      var token = this._proto === 2 ? parseToken(msg.resume) : null;
      // Which acknowledged writes lost while we were away: the value differs from what we wrote.
      var lost = [];
      var self = this;
      this._tracked.forEach(function (t, key) {
        if (self._ackedTracked(key) === null) return;
        var present = Object.prototype.hasOwnProperty.call(data, key);
        var differs = t.del ? present : !present || !jsonEqual(data[key], t.value);
        if (differs) lost.push([key, t, present ? data[key] : undefined]);
      });
      this._dropSettledPeers();
      this._applyWhole(data);
      this._setVersion(token);
      lost.forEach(function (l) { self._fireSupersede(l[0], l[1], l[2]); });
      this._afterState();
    }

    _onDelta(msg) {
      var data = msg.data && typeof msg.data === 'object' && !Array.isArray(msg.data) ? msg.data : {};
      var deleted = Array.isArray(msg.deleted) ? msg.deleted : [];
      var token = parseToken(msg.resume);
      var since = this._resumeSince;
      var lost = [];
      var self = this;
      var touch = function (key, del, value) {
        var t = self._ackedTracked(key);
        // The key changed after our token; our acknowledged write is at or before it, so a later
        // write by someone else replaced it.
        if (t && since && t.run === since.run && t.seq !== null && t.seq <= since.seq) lost.push([key, t, value]);
        self._setBase(key, del, value);
      };
      this._dropSettledPeers();
      Object.keys(data).forEach(function (key) { touch(key, false, data[key] === undefined ? null : data[key]); });
      deleted.forEach(function (key) {
        if (typeof key === 'string') touch(key, true, undefined);
      });
      Object.keys(data).concat(deleted).forEach(function (key) {
        if (typeof key === 'string') self._refresh(key);
      });
      this._setVersion(token);
      lost.forEach(function (l) { self._fireSupersede(l[0], l[1], l[2]); });
      this._afterState();
    }

    /** After a relay snapshot or delta: the state is exactly the relay's as of `token`. */
    _setVersion(token) {
      if (token) {
        if (token.run !== this._run) this._keySeq.clear();
        this._run = token.run;
        this._seq = token.seq;
        this._floorSeq = token.seq;
        this._resumable = true;
      } else {
        this._run = null;
        this._seq = 0;
        this._floorSeq = 0;
        this._keySeq.clear();
        this._resumable = false;
      }
    }

    /** Orders sibling re-posts by `run` from a source other than our own connection (no resume). */
    _useRun(run, floor) {
      if (run !== this._run) this._keySeq.clear();
      this._run = run;
      this._seq = floor;
      this._floorSeq = floor;
      this._resumable = false;
    }

    _afterState() {
      this._markReady();
      this._scheduleSave();
      this._repost({ type: 'snapshot', data: this.snapshot(), run: this._run, seq: this._seq });
      this._pruneBookkeeping();
    }

    /**
     * Per-key versions are needed only to order sibling re-posts newer than the last relay
     * snapshot; once they outnumber the keys by far, those at or below the floor go.
     */
    _pruneBookkeeping() {
      var limit = this._base.size + BOOKKEEPING_SLACK;
      var self = this;
      if (this._keySeq.size > limit) {
        this._keySeq.forEach(function (seq, key) {
          if (seq <= self._floorSeq) self._keySeq.delete(key);
        });
      }
      if (this._keyStamp.size > limit) {
        this._keyStamp.forEach(function (_, key) {
          if (!self._base.has(key)) self._keyStamp.delete(key);
        });
      }
    }

    /** A `set`/`delete` frame from the relay. */
    _onOp(msg) {
      var key = msg.key;
      if (typeof key !== 'string') return;
      var del = msg.type === 'delete';
      var value = del ? undefined : msg.value === undefined ? null : msg.value;
      var v2 = this._proto === 2;
      var stamp = v2 && typeof msg.stamp === 'string' ? msg.stamp : null;
      var seq = v2 && typeof msg.seq === 'number' ? msg.seq : null;
      var origin = v2 && typeof msg.origin === 'string' ? msg.origin : null;
      if (seq !== null) {
        if (seq > this._seq) this._seq = seq;
        this._keySeq.set(key, seq);
        // Bounded: everything up to here is what the relay says (a connected tab ignores re-posts).
        if (this._keySeq.size > this._base.size + BOOKKEEPING_SLACK) {
          this._keySeq.clear();
          this._floorSeq = this._seq;
        }
      }
      if (stamp !== null) this._keyStamp.set(key, stamp);
      if (this._keyStamp.size > this._base.size + BOOKKEEPING_SLACK) this._pruneBookkeeping();
      this._setBase(key, del, value);

      // Siblings first (before `settled`), so a tab that follows our re-posts never sees a gap.
      this._repost({ type: msg.type, key: key, value: value, run: this._run, seq: seq, stamp: stamp, origin: origin });

      var mine = origin !== null && this._myIds.has(origin);
      if (v2) {
        if (origin !== null && origin === this._myId) {
          // Our connection's echo settles our oldest sent write to the key, unless the socket
          // is shared: a follower waits for its acks, a leader does while followers' writes to
          // the key are in flight (the echo may be theirs).
          var own = this._connection.linked || this._fwdKeys.has(key) ? null : this._outbox.oldestSent(key, null);
          if (own) this._confirm(own, stamp, seq);
        } else if (!mine) {
          var t = this._ackedTracked(key);
          if (t && stamp !== null && stamp > t.stamp) this._fireSupersede(key, t, value);
        }
      } else {
        var match = this._outbox.oldestSent(key, function (e) {
          return del ? e.op === 'delete' : e.op === 'set' && jsonEqual(e.value, value);
        });
        if (match) this._confirm(match, null, null);
      }

      var o = this._overlay.get(key);
      if (o && !o.own && ((origin !== null && o.cid === origin) || (o.del ? del : !del && jsonEqual(o.value, value)))) {
        this._recomputeOverlay(key);
      }
      this._refresh(key);
    }

    _onAck(msg) {
      this._fwdDone(msg.ref);
      var e = this._outbox.sentWithId(msg.ref);
      if (e) this._confirm(e, typeof msg.stamp === 'string' ? msg.stamp : null, typeof msg.seq === 'number' ? msg.seq : null);
    }

    _onNack(msg) {
      this._fwdDone(msg.ref);
      var e = this._outbox.sentWithId(msg.ref);
      if (e) this._refuse(e, typeof msg.reason === 'string' ? msg.reason : 'refused');
    }

    /** A follower's write we sent was acknowledged or refused. */
    _fwdDone(ref) {
      var key = this._fwdRefs.get(ref);
      if (key === undefined) return;
      this._fwdRefs.delete(ref);
      var n = (this._fwdKeys.get(key) || 1) - 1;
      if (n > 0) this._fwdKeys.set(key, n);
      else this._fwdKeys.delete(key);
    }

    /** This tab leads a shared scope and its socket is open: it carries the followers' frames. */
    get _carrier() {
      var c = this._connection;
      return !!this._tabs && this._tabs.shared && this._tabs.leader && c.isOpen && !c.linked;
    }

    /** A follower asks to link: welcome it with our hello and the relay's state, or refuse. */
    _onLinkRequest(msg) {
      if (!this._tabs || !this._tabs.shared || !this._tabs.leader) return;
      if (msg.to !== this._tabId && msg.to != null) return;
      if (!this._carrier || !this._helloFrame) {
        this._post({ type: 'drop', to: msg.from, code: 1006, reason: 'the leader tab is not connected' });
        return;
      }
      var snap = { type: 'snapshot', data: {} };
      this._base.forEach(function (v, k) { snap.data[k] = v; });
      if (this._proto === 2 && this._run !== null) snap.resume = this._run + '.' + this._seq;
      this._followers.add(msg.from);
      this._post({ type: 'welcome', to: msg.from, frames: [JSON.stringify(this._helloFrame), JSON.stringify(snap)] });
    }

    /** A follower's frame for the relay: sent on our socket as it is. */
    _onUp(msg) {
      if (msg.to !== this._tabId || typeof msg.text !== 'string') return;
      if (!this._carrier || !this._followers.has(msg.from)) {
        this._post({ type: 'drop', to: msg.from, code: 1006, reason: 'the leader tab is not connected' });
        return;
      }
      var m = null;
      try {
        m = JSON.parse(msg.text);
      } catch (_) {
        return;
      }
      // Cursors share our socket's rate budget with ours (the relay counts the socket's messages);
      // a cursor over budget is dropped (the next replaces it anyway).
      if (m && m.type === 'presence' && !this._takeToken()) return;
      if (m && (m.type === 'set' || m.type === 'delete') && typeof m.ref === 'string' && typeof m.key === 'string' && !this._fwdRefs.has(m.ref)) {
        this._fwdRefs.set(m.ref, m.key);
        this._fwdKeys.set(m.key, (this._fwdKeys.get(m.key) || 0) + 1);
      }
      this._sendText(msg.text);
    }

    _keySeqOf(key) {
      var s = this._keySeq.get(key) || 0;
      return s > this._floorSeq ? s : this._floorSeq;
    }

    // ----- networking ----------------------------------------------------------------------

    _wsUrl() {
      var params = [];
      if (this._opts.protocol === 2) {
        params.push(['v', '2']);
        if (this._resumable && this._run !== null) {
          params.push(['resume', this._run + '.' + this._seq]);
        }
        if (this._proto !== 1) params.push(['cid', this._cid]); // an upstream server ignores it anyway
      }
      if (this._room !== null) params.push(['room', this._room]);
      if (this._opts.authToken) params.push(['auth_token', this._opts.authToken]);
      return withQuery(this.url, params);
    }

    _connect() {
      if (this._closed || this._fatal) return;
      // A tab that does not know yet whether it leads waits: it connects when it takes the lead
      // (`leading`) or links when it hears the leader's socket is open (`leaderSeen`), and asks a
      // token function for nothing meanwhile.
      this._awaitLeader = !!this._tabs && this._tabs.undecided;
      if (this._awaitLeader) return;
      if (this._tokenFn && !this._freshToken && !(this._tabs && this._tabs.follower)) {
        // Every connect presents a token the function gave for it (a follower's link none: it
        // rides on the leader's connection, admitted with the leader's token).
        if (this._connection.state === 'idle' && !this._connection.ws) this._fetchToken(null);
        return;
      }
      this._freshToken = false;
      var url = this._connection.connect();
      if (url === null) return;
      this._resumeSince = /[?&]resume=/.test(url) ? { run: this._run, seq: this._seq } : null;
      this._sentSomething = false;
    }

    _onOpen() {
      if (this._opts.authToken) this._sendText(JSON.stringify({ type: 'auth', token: this._opts.authToken }));
    }

    /** After every end of a connection (Connection.end): what the client undoes and reports. */
    _onEnded(code, reason, how, wasOpen) {
      clearTimeout(this._pumpTimer);
      this._pumpTimer = null;
      clearTimeout(this._refreshTimer);
      this._refreshTimer = null;
      this._myId = this._myColor = null;
      this._outbox.requeue();
      // A leader's socket ended: its followers' links end too (they send their writes again).
      if (this._followers.size) {
        this._post(how === 'retry' ? { type: 'drop', code: code, reason: reason } : { type: 'drop', code: 1001, reason: 'the leader tab closed its socket' });
        this._followers.clear();
      }
      this._fwdRefs.clear();
      this._fwdKeys.clear();
      this._helloFrame = null;
      // The siblings' cursors were shown under this connection's id: they leave, and come back
      // under the next one's (each tab sends its cursor again on its next hello).
      var self = this;
      Array.from(this._siblingCursors.keys()).forEach(function (tab) { self._siblingCursorGone(tab, false); });
      if (how === 'stop') {
        if (wasOpen) this._notifyStatus();
      } else if (how === 'quiet') {
        this._status = { connected: false, protocol: this._proto, code: null, reason: null, retryInMs: null, fatal: false };
        if (wasOpen) this._notifyStatus();
      } else if (how === 'restart') {
        this._status = { connected: false, protocol: this._proto, code: code, reason: reason, retryInMs: 0, fatal: false };
        this._notifyStatus();
      } else {
        this._afterClose(code, reason);
      }
    }

    /**
     * The watchdog's question while open: a write unacknowledged for `ackTimeoutMs` (with nothing
     * heard for `pingTimeoutMs`), or nothing heard for `pingIntervalMs`, asks for a v2 `ping`
     * (unanswered: reconnect). v1 has no ping: an overdue echo means the socket is dead.
     */
    _checkAlive() {
      var o = this._opts;
      var t = now();
      var heard = this._connection.lastHeard;
      var overdue = t - heard > o.pingTimeoutMs && this._outbox.overdue(t, o.ackTimeoutMs);
      if (this._proto === 1) return overdue ? 'dead' : 'ok';
      return overdue || (o.pingIntervalMs > 0 && t - heard > o.pingIntervalMs) ? 'ping' : 'ok';
    }

    /** The page says the network came back or the tab became visible: is the connection alive? */
    _wake(kind) {
      if (this._closed || this._fatal) return;
      var c = this._connection;
      if (c.state === 'open') {
        // A new network: the old socket may be bound to the old one; visible again: ask.
        if (this._proto === 2) c.ping();
        else if (kind === 'online') c.end(4000, 'network changed', 'restart');
      } else if (c.state === 'idle' && c.retryPending && this._opts.autoReconnect) {
        this._connect(); // skip the backoff wait: the reason we were failing may be gone
      }
    }

    _onFrame(data) {
      if (typeof data !== 'string') {
        // The relay sends text frames only; tolerate a Node Buffer from non-browser WebSockets.
        if (data && typeof data === 'object' && typeof data.toString === 'function' && typeof data.byteLength === 'number') {
          data = data.toString('utf8');
        } else return;
      }
      var msg;
      try {
        msg = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (!msg || typeof msg !== 'object' || Array.isArray(msg)) return;
      // The leader re-posts every relay frame to its followers, once (one message, N-1 readers).
      if (this._followers.size && msg.type !== 'hello') this._post({ type: 'down', text: data });
      switch (msg.type) {
        case 'hello':
          return this._onHello(msg);
        case 'snapshot':
          return this._onSnapshot(msg);
        case 'delta':
          return this._onDelta(msg);
        case 'set':
        case 'delete':
          return this._onOp(msg);
        case 'ack':
          return this._onAck(msg);
        case 'nack':
          return this._onNack(msg);
        case 'pong':
          return; // any frame proves the connection alive
        case 'presence':
          if (typeof msg.id !== 'string' || msg.id === this._myId) return;
          var user = typeof msg.user === 'string' ? msg.user : null;
          this._presenceWatchers.forEach(function (cb) { callSafely(cb, [msg.id, msg.x, msg.y, msg.color, user]); });
          this._repost({ type: 'presence', id: msg.id, color: msg.color, x: msg.x, y: msg.y, user: user, relayed: true });
          return;
        case 'auth_ok':
          if (msg.access === 'read' || msg.access === 'write') this._access = msg.access;
          this._scheduleRefresh(msg.exp);
          return;
        case 'presence-leave':
          if (typeof msg.id !== 'string') return;
          this._leaveWatchers.forEach(function (cb) { callSafely(cb, [msg.id]); });
          this._repost({ type: 'presence-leave', id: msg.id });
          return;
        default:
          return; // forward compatible: unknown frames are ignored
      }
    }

    _onHello(msg) {
      if (this._room !== null && this._opts.protocol === 2 && (msg.v !== 2 || msg.room !== this._room)) {
        // A relay that answers without our room does not know rooms (upstream, or an older
        // aether-actix): it would show and take writes of its one map. Stop, loudly.
        this._connection.end(4400, 'the relay does not support rooms', 'quiet');
        this._stop('room', 4400, 'the relay does not support rooms', 'this relay has no rooms; not connecting to room ' + this._room);
        return;
      }
      this._authRetried = false;
      this._user = typeof msg.user === 'string' ? msg.user : null;
      this._access = msg.access === 'read' ? 'read' : 'write';
      this._helloFrame = msg;
      this._myId = typeof msg.id === 'string' ? msg.id : null;
      this._myColor = typeof msg.color === 'string' ? msg.color : null;
      this._proto = msg.v === 2 ? 2 : 1;
      this._node = typeof msg.node === 'string' ? msg.node : null;
      if (this._myId) {
        this._myIds.add(this._myId);
        // Our past connection ids (origins of our own writes); a few suffice.
        if (this._myIds.size > 64) this._myIds.delete(this._myIds.values().next().value);
      }
      if (this._proto === 1) {
        // No stamps, no resume on an upstream server: forget what only v2 provides.
        this._run = null;
        this._resumable = false;
        this._resumeSince = null;
        this._tracked.clear();
      }
      // The backoff is not reset here: a relay or proxy that closes right after hello must not
      // get a new connection every few hundred ms (it resets once a connection lasted).
      this._connection.markOpen();
      this._tokens = Math.max(1, this._opts.sendBurst);
      this._tokensAt = now();
      this._status = { connected: true, protocol: this._proto, code: null, reason: null, retryInMs: null, fatal: false };
      this._scheduleRefresh(msg.exp);
      this._notifyStatus();
      if (this._tabs && !this._connection.linked) this._tabs.beat(); // followers may link now
      this._pump();
      // A new connection (a new leader, or a reconnect): our cursor appears again, under its id.
      var cursor = this._cursor;
      if (cursor && this._tabCursors) {
        if (this._takeToken()) this._sendText(this._presenceText(cursor.x, cursor.y));
        this._post({ type: 'presence', id: this._myId + ':' + this._tabId, tab: this._tabId, color: this._myColor, x: cursor.x, y: cursor.y, user: this._user });
      }
      // Upstream closes a connection whose first message does not come within 5 s; one ignored
      // frame keeps an idle tab connected there (our relay needs nothing: browsers answer pings).
      if (this._proto === 1 && !this._sentSomething) {
        this._sendText(JSON.stringify({ type: 'auth', token: this._opts.authToken || '' }));
      }
    }

    /** After the socket closed or failed: report it, and back off before the next attempt. */
    _afterClose(code, reason) {
      if (this._closed) return;
      var auth = code === 4401 || (code === 1008 && /auth|token/i.test(reason));
      var forbidden = code === 4403 || (code === 1008 && /forbidden/i.test(reason));
      var badRoom = code === 4400 || (code === 1008 && /room/i.test(reason) && !/too many/i.test(reason));
      var rate = code === 4429 || (code === 1008 && /rate/i.test(reason));
      var busy = code === 1013 || code === 4503 || code === 4504;
      var tooBig = code === 1009;
      if (auth && this._tokenFn && !this._authRetried && this._opts.autoReconnect) {
        // Expired or refused: the function may have a good token now. Once per failure streak.
        this._authRetried = true;
        this._connection.retryIn(0);
        this._status = { connected: false, protocol: this._proto, code: code, reason: reason, retryInMs: 0, fatal: false };
        this._notifyStatus();
        return;
      }
      if (auth) return this._stop('auth', code, reason, 'authentication failed: check the token; not reconnecting');
      if (forbidden) return this._stop('forbidden', code, reason, 'the token does not grant room ' + (this._room === null ? '(default)' : this._room) + '; not reconnecting');
      if (badRoom) return this._stop('room', code, reason, 'the relay refused the room name ' + JSON.stringify(this._room) + '; not reconnecting');
      if (rate) {
        this._rate = this._rate === Infinity ? DEFAULTS.sendRatePerSecond : Math.max(1, this._rate / 2);
        this._emitError({ type: 'rate-limit', code: code, reason: reason, fatal: false, message: 'the relay closed the connection for sending too fast; sending slower' });
      }
      if (tooBig) {
        this._emitError({ type: 'too-big', code: code, reason: reason, fatal: false, message: 'the relay refused a message as too big' });
      }
      var delay = null;
      if (this._opts.autoReconnect) {
        delay = this._connection.backoff.next(busy ? 'busy' : rate ? 'rate' : 'normal');
        this._connection.retryIn(delay);
      }
      this._status = { connected: false, protocol: this._proto, code: code, reason: reason, retryInMs: delay, fatal: false };
      this._notifyStatus();
    }

    /** A close that no retry can fix: no more reconnects until `reconnect()`; reported. */
    _stop(type, code, reason, message) {
      this._fatal = true;
      this._status = { connected: false, protocol: this._proto, code: code, reason: reason, retryInMs: null, fatal: true };
      this._notifyStatus();
      this._emitError({ type: type, code: code, reason: reason, fatal: true, message: message });
    }

    _notifyStatus() {
      var connected = this._connected;
      var status = this.status;
      Array.from(this._statusWatchers).forEach(function (cb) { callSafely(cb, [connected, status]); });
    }

    _emitError(err) {
      Array.from(this._errorWatchers).forEach(function (cb) { callSafely(cb, [err]); });
    }

    // ----- same-origin tabs (BroadcastChannel 'aether::' + cacheKey, see Tabs) --------------

    /**
     * Re-posts a relay frame for siblings without a connection: the leader tab alone does. In a
     * shared scope the followers have the leader's frames themselves (`down`), so nothing is.
     */
    _repost(msg) {
      if (this._leader && !this._tabs.shared) this._post(msg);
    }

    _post(msg) {
      if (this._tabs) this._tabs.post(msg);
    }

    _onChannel(msg) {
      var key = msg.key;
      switch (msg.type) {
        case 'set':
        case 'delete':
          if (typeof key !== 'string') return;
          if (msg.local) this._onPeerWrite(msg);
          else this._onPeerRelay(msg);
          return;
        case 'settled':
          return this._onPeerSettled(msg);
        case 'link':
          return this._onLinkRequest(msg);
        case 'up':
          return this._onUp(msg);
        case 'unlink':
          this._followers.delete(msg.from);
          return;
        case 'presence':
          if (typeof msg.id !== 'string') return;
          if (typeof msg.tab === 'string') {
            // A sibling tab's cursor: its socket is ours too, so the relay never sends it here.
            var shown = this._siblingCursors.get(msg.tab);
            if (shown !== undefined && shown !== msg.id) this._siblingCursorGone(msg.tab, false);
            this._siblingCursors.set(msg.tab, msg.id);
          } else if (this._connected) {
            return; // the relay tells us itself
          }
          var user = typeof msg.user === 'string' ? msg.user : null;
          this._presenceWatchers.forEach(function (cb) { callSafely(cb, [msg.id, msg.x, msg.y, msg.color, user]); });
          return;
        case 'presence-leave':
          if (typeof msg.tab === 'string') return this._siblingCursorGone(msg.tab, false);
          if (this._connected || typeof msg.id !== 'string') return;
          this._leaveWatchers.forEach(function (cb) { callSafely(cb, [msg.id]); });
          return;
        case 'snapshot-request':
          if (this._hasSnapshot || this._state.size > 0) {
            this._post({ type: 'snapshot', data: this.snapshot(), run: this._run, seq: this._seq });
          }
          return;
        case 'snapshot':
          if (this._hasSnapshot || !msg.data || typeof msg.data !== 'object') return;
          if (typeof msg.run === 'string' && typeof msg.seq === 'number') this._useRun(msg.run, msg.seq);
          this._applyWhole(msg.data);
          this._markReady();
          this._scheduleSave();
          return;
        case 'outbox-probe':
          if (Array.isArray(msg.owners) && msg.owners.indexOf(this._tabId) >= 0 && this._outbox.size) {
            this._post({ type: 'outbox-alive', owner: this._tabId });
          }
          return;
        case 'outbox-alive':
          var t = this._probes.get(msg.owner);
          if (t !== undefined) {
            clearTimeout(t);
            this._probes.delete(msg.owner);
          }
          return;
        case 'cache-off':
          this._cacheOk = false;
          clearTimeout(this._saveTimer);
          this._saveTimer = null;
          return;
        case 'bye':
          this._followers.delete(msg.from);
          if (Array.isArray(msg.entries)) this._handed.set(msg.from, msg.entries);
          this._onPeerGone(msg.from, !!msg.pending);
          return;
        default:
          return;
      }
    }

    /** A sibling tab's optimistic write: shown at once, until the sibling settles it. */
    _onPeerWrite(msg) {
      var key = msg.key;
      // The sibling wrote before it saw a relay frame we already applied: that frame may be its
      // own echo or a later write; either way the relay's frames (ours) tell the truth.
      if (this._run !== null && msg.run === this._run && typeof msg.seq === 'number' && (this._keySeq.get(key) || 0) > msg.seq) return;
      this._overlay.set(key, {
        own: false, tab: msg.from, n: msg.n, cid: typeof msg.cid === 'string' ? msg.cid : null,
        del: msg.type === 'delete', value: msg.type === 'delete' ? undefined : msg.value === undefined ? null : msg.value,
        at: now(), settled: false,
      });
      this._refresh(key);
      this._schedulePeerSweep();
    }

    _onPeerSettled(msg) {
      if (typeof msg.key !== 'string') return;
      var o = this._overlay.get(msg.key);
      if (!o || o.own || o.tab !== msg.from || o.n !== msg.n) return;
      // A refused write is undone now. With v2 a durable one stays shown until our own connection
      // delivers its echo (recognised by origin; no flicker back to the old value). Without v2
      // origins it is dropped now: the relay sends the echo to every tab at once, and a tab
      // without a connection already has it from the sibling's re-post.
      if (msg.failed || !this._connected || this._proto !== 2) {
        this._recomputeOverlay(msg.key);
        this._refresh(msg.key);
      } else {
        o.settled = true;
      }
    }

    _dropSettledPeers() {
      var self = this;
      Array.from(this._overlay.keys()).forEach(function (key) {
        var o = self._overlay.get(key);
        if (o && !o.own && o.settled) self._recomputeOverlay(key);
      });
    }

    _onPeerGone(tab, pending) {
      var self = this;
      Array.from(this._overlay.keys()).forEach(function (key) {
        var o = self._overlay.get(key);
        if (o && !o.own && o.tab === tab) {
          self._recomputeOverlay(key);
          self._refresh(key);
        }
      });
      if (this._bcSource === tab) this._bcSource = null;
      // With Web Locks, the sibling's lock decides who takes its writes (`Tabs.watch`), the
      // moment it is really gone (a page entering the back-forward cache keeps its lock).
      if (this._tabs && this._tabs.hasLocks) return;
      if (pending) {
        // Someone has to send the closed tab's writes: a random delay makes a race unlikely (and
        // with v2 a write sent by two tabs is still applied once: same client id, same write id).
        timer(function () {
          if (self._closed) return;
          var handed = self._handed.get(tab);
          self._handed.delete(tab);
          if (!self._adopt(self._cacheKey + '::outbox::' + tab) && handed) self._adoptEntries(handed);
        }, Math.floor(Math.random() * 200), true);
      }
    }

    _schedulePeerSweep() {
      if (this._peerTimer) return;
      var self = this;
      this._peerTimer = timer(function () {
        self._peerTimer = null;
        var cutoff = now() - PEER_OVERLAY_TTL_MS;
        var left = false;
        Array.from(self._overlay.keys()).forEach(function (key) {
          var o = self._overlay.get(key);
          if (!o || o.own) return;
          if (o.at < cutoff && self._connected) {
            self._recomputeOverlay(key);
            self._refresh(key);
          } else left = true;
        });
        if (left) self._schedulePeerSweep();
      }, PEER_OVERLAY_TTL_MS, true);
    }

    /**
     * A relay frame re-posted by a sibling. A connected tab ignores it (its own connection is the
     * truth, and a re-post can arrive after a newer frame). A tab without a connection applies it
     * only if it is newer than what it has: same relay run and a greater sequence number (v2), a
     * greater stamp, or, against a v1 relay, only from one sibling at a time (a channel keeps each
     * sender's order).
     */
    _onPeerRelay(msg) {
      if (this._connected) return;
      var key = msg.key;
      var t = now();
      if (typeof msg.seq === 'number' && typeof msg.run === 'string') {
        if (this._run === null) this._useRun(msg.run, 0);
        if (msg.run === this._run) {
          if (msg.seq <= this._keySeqOf(key)) return;
        } else {
          // Another run of the relay (it restarted): only stamps compare across runs.
          var known = this._keyStamp.get(key);
          if (typeof msg.stamp !== 'string' || (known && msg.stamp <= known)) return;
          this._useRun(msg.run, 0);
        }
        this._keySeq.set(key, msg.seq);
        if (typeof msg.stamp === 'string') this._keyStamp.set(key, msg.stamp);
      } else {
        if (this._bcSource !== msg.from && this._bcSource !== null && t - this._bcSourceAt < BC_SOURCE_TTL_MS) return;
        this._bcSource = msg.from;
        this._bcSourceAt = t;
      }
      var del = msg.type === 'delete';
      this._setBase(key, del, del ? undefined : msg.value === undefined ? null : msg.value);
      var o = this._overlay.get(key);
      if (o && !o.own && (o.del ? del : !del && jsonEqual(o.value, msg.value))) this._recomputeOverlay(key);
      this._refresh(key);
    }

    // ----- persistence ---------------------------------------------------------------------

    /** The cached state of the current scope, or null. A corrupt cache is removed, as upstream. */
    _readCache() {
      return this._store ? this._store.readCache(this._cacheKey) : null;
    }

    _loadCache() {
      var data = this._readCache();
      if (!data) return;
      for (var k in data) {
        if (Object.prototype.hasOwnProperty.call(data, k)) {
          var v = data[k] === undefined ? null : data[k];
          this._base.set(k, v);
          this._state.set(k, v);
        }
      }
      this._hasSnapshot = true;
    }

    _scheduleSave() {
      if (!this._store || !this._cacheOk || this._saveTimer || this._closed) return;
      var self = this;
      this._saveTimer = timer(function () {
        self._saveTimer = null;
        self._saveCache();
      }, CACHE_DEBOUNCE_MS);
    }

    /**
     * Writes the state cache. Only the scope's leader tab writes it (every tab when Web Locks are
     * missing), and never over a cache of the same relay run that is further along (`seq`), so a
     * stale tab cannot overwrite a fresher cache. When storage is full the cache is the first
     * thing given up (it can be fetched again; pending writes cannot).
     */
    _saveCache() {
      if (!this._store || !this._cacheOk || !this._leader) return;
      if (this._store.writeCache(this._cacheKey, this.snapshot(), this._run, this._seq) === 'full') this._dropCache();
    }

    /**
     * Storage is full: stop caching state for this session and free the space the cache used.
     * The sibling tabs stop too (`cache-off`), or the leader would fill the space again.
     */
    _dropCache() {
      if (!this._cacheOk) return;
      this._cacheOk = false;
      clearTimeout(this._saveTimer);
      this._saveTimer = null;
      this._store.removeCache(this._cacheKey);
      this._post({ type: 'cache-off' });
      this._emitError({
        type: 'storage', code: null, reason: 'quota', fatal: false,
        message: 'localStorage is full: the state is no longer cached for offline use in this session',
      });
    }

    _queueOutboxSave() {
      if (this._outboxSaveQueued || !this._store) return;
      this._outboxSaveQueued = true;
      var self = this;
      Promise.resolve().then(function () {
        self._outboxSaveQueued = false;
        if (!self._closed) self._saveOutbox(false);
      });
    }

    /**
     * Writes this tab's outbox (pending writes) to localStorage under its own key. The stored
     * outbox is never older than what the tab shows: when it does not fit, the state cache is
     * freed and the save tried again; if it still does not fit, the stale stored outbox is
     * removed (a reload must not send writes this tab has since replaced) and the app is told
     * through `onError`. Returns whether storage now holds exactly the pending writes.
     */
    _saveOutbox(released) {
      var store = this._store;
      if (!store) return false;
      if (!this._outbox.size) {
        this._savedIds = null;
        clearTimeout(this._beatTimer);
        this._beatTimer = null;
        return store.remove(this._outboxKey);
      }
      var entries = this._outbox.record();
      var text = JSON.stringify({
        v: 1, owner: this._tabId, lock: this._tabs ? this._tabs.ownLock : null, released: !!(released || this._hidden), beat: now(), entries: entries,
      });
      var ok = store.set(this._outboxKey, text);
      if (!ok && this._cacheOk) {
        this._dropCache();
        ok = store.set(this._outboxKey, text);
      }
      if (ok) {
        this._savedIds = new Set(entries.map(function (e) { return e.id; }));
        this._outboxFull = false;
      } else {
        store.remove(this._outboxKey);
        this._savedIds = null;
        if (!this._outboxFull) {
          this._outboxFull = true;
          this._emitError({
            type: 'storage', code: null, reason: 'quota', fatal: false,
            message: 'localStorage is full: ' + entries.length + ' pending write(s) are kept in memory only and are lost if every tab closes before they are sent',
          });
        }
      }
      if (!released && !this._beatTimer) {
        var self = this;
        this._beatTimer = timer(function () {
          self._beatTimer = null;
          if (!self._closed) self._saveOutbox(false);
        }, OUTBOX_BEAT_MS, true);
      }
      return ok;
    }

    /**
     * The page (or this client) is going away: save the outbox and tell the siblings, handing
     * them the writes themselves when storage could not take them. With Web Locks a sibling
     * takes them over as soon as this tab's lock is free; without, at once.
     */
    _handOver() {
      var saved = this._saveOutbox(true);
      var msg = { type: 'bye', pending: this._outbox.size > 0 };
      if (this._outbox.size && !saved) msg.entries = this._outbox.record();
      this._post(msg);
    }

    /** Finds outboxes of tabs that are gone (reloaded, closed, crashed) and takes their writes. */
    _scanOrphans() {
      var found = this._store && this._store.keys(this._cacheKey + '::outbox::');
      if (!found) return;
      var probe = [];
      var self = this;
      found.forEach(function (k) {
        if (k === self._outboxKey) return;
        var rec = self._store.readOutbox(k);
        if (!rec) return;
        if (self._tabs.hasLocks && typeof rec.lock === 'string') {
          // Its owner held a lock: granted to us at once if the owner is gone, else when it goes.
          self._tabs.watch(rec.owner);
          return;
        }
        if (rec.released || now() - (typeof rec.beat === 'number' ? rec.beat : 0) > self._opts.outboxStaleMs) {
          self._adopt(k);
          return;
        }
        // Maybe its tab is alive: ask it over the channel; without a channel, wait until it is stale.
        if (!self._bc) return;
        probe.push(rec.owner);
        self._probes.set(rec.owner, timer(function () {
          self._probes.delete(rec.owner);
          if (!self._closed) self._adopt(k);
        }, ADOPT_PROBE_MS, true));
      });
      if (probe.length) this._post({ type: 'outbox-probe', owners: probe });
    }

    /** Takes over another tab's stored pending writes; true if there were any. */
    _adopt(k) {
      if (!this._store) return false;
      var rec = this._store.readOutbox(k);
      if (!rec) return false;
      if (!this._store.remove(k)) return false;
      this._adoptEntries(rec.entries);
      return true;
    }

    /** Adds another tab's pending writes to ours, ids kept (a newer own write to the same key wins). */
    _adoptEntries(entries) {
      var self = this;
      var changed = [];
      entries.forEach(function (e) {
        if (!e || (e.op !== 'set' && e.op !== 'delete') || typeof e.key !== 'string') return;
        var t = typeof e.t === 'number' ? e.t : 0;
        var id = typeof e.id === 'string' && e.id && e.id.length <= 64 ? e.id : null;
        if ((id !== null && self._outbox.has(id)) || self._outbox.newerThan(e.key, t)) return;
        var value = e.op === 'set' ? (e.value === undefined ? null : e.value) : undefined;
        var entry = self._outbox.add(e.op, e.key, value, t, id);
        self._track(e.key, entry);
        self._overlay.set(e.key, { own: true, n: entry.n, del: e.op === 'delete', value: value });
        changed.push(e.key);
      });
      changed.forEach(function (key) { self._refresh(key); });
      if (changed.length) {
        this._saveOutbox(false);
        this._pump();
      }
    }

    /**
     * Back from the back-forward cache or a freeze: if a sibling adopted our writes meanwhile
     * (possible only without Web Locks), they are its to send now; drop our copies.
     */
    _recheckOwnership() {
      if (!this._store || !this._savedIds || !this._outbox.size) return;
      var rec = this._store.readOutbox(this._outboxKey);
      if (rec && rec.owner === this._tabId) return;
      var saved = this._savedIds;
      var self = this;
      var gone = this._outbox.entries.filter(function (e) { return saved.has(e.id); });
      gone.forEach(function (e) {
        self._outbox.remove(e);
        e.writes.forEach(function (w) { w._fail('handed-over'); });
        var o = self._overlay.get(e.key);
        if (o && o.own && o.n === e.n) {
          self._recomputeOverlay(e.key);
          self._refresh(e.key);
        }
      });
      this._savedIds = null;
    }

    _listenPageLifecycle() {
      var g = typeof globalThis !== 'undefined' ? globalThis : null;
      if (!g || typeof g.addEventListener !== 'function' || typeof g.removeEventListener !== 'function') return;
      var self = this;
      var hide = function () {
        if (self._closed) return;
        if (self._saveTimer) {
          clearTimeout(self._saveTimer);
          self._saveTimer = null;
          self._saveCache();
        }
        self._hidden = true; // a write from now on is saved and handed over at once
        self._cursorGone();
        self._handOver();
      };
      var show = function () {
        if (self._closed) return;
        self._hidden = false;
        self._recheckOwnership();
        self._saveOutbox(false);
        self._wake('visible');
      };
      var online = function () {
        if (!self._closed) self._wake('online');
      };
      var doc = g.document;
      var visible = function () {
        if (!self._closed && doc && doc.visibilityState === 'visible') self._wake('visible');
      };
      g.addEventListener('pagehide', hide);
      g.addEventListener('pageshow', show);
      g.addEventListener('online', online);
      if (doc && typeof doc.addEventListener === 'function') doc.addEventListener('visibilitychange', visible);
      this._unlisten = function () {
        g.removeEventListener('pagehide', hide);
        g.removeEventListener('pageshow', show);
        g.removeEventListener('online', online);
        if (doc && typeof doc.removeEventListener === 'function') doc.removeEventListener('visibilitychange', visible);
      };
    }
  }

  Aether.AetherWrite = AetherWrite;
  Aether.AetherWriteError = AetherWriteError;
  Aether.Aether = Aether;
  Aether.default = Aether;
  Aether.version = '0.1.0';
  return Aether;
});

/* The operator console (static/console/README.md): rooms, members, a room's keys live, a key's
 * history and the room at any past moment, mesh peers, /metrics as small charts, and the admin
 * actions (delete a key, disconnect, compact), all over the HTTP API (/api/v1/, the API key).
 *
 * Every string that comes from the relay (room names, keys, values, users, peers) reaches the page
 * as text (textContent / text nodes), never as markup. */
(function () {
  'use strict';

  const KEY_STORE = 'aether-console-key';
  const ROOMS_EVERY = 3000;
  const ROOM_EVERY = 1000;
  const METRICS_EVERY = 1000;
  const CHART_POINTS = 60;

  const $ = (id) => document.getElementById(id);

  /** An element with properties and children (strings become text nodes, never markup). */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return el;
  }
  const svg = (tag, attrs) => {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    return el;
  };

  /** A JSON value as one short line. */
  function short(value, max = 160) {
    let s;
    try {
      s = JSON.stringify(value);
    } catch {
      s = String(value);
    }
    if (s === undefined) s = 'undefined';
    return s.length > max ? s.slice(0, max - 1) + '…' : s;
  }
  const fmtBytes = (n) => (n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB' : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' B');
  const clock = (d = new Date()) => d.toTimeString().slice(0, 8);

  /** A path segment: `_` stays the default room; everything else percent-encoded. */
  const seg = (s) => encodeURIComponent(s);
  /** A key for a path: `/` kept as `%2F` so a key ending in `/history` stays a key. */
  const keyPath = (k) => encodeURIComponent(k);

  // ------------------------------------------------------------------ the API
  let apiKey = sessionStorage.getItem(KEY_STORE);

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || 'HTTP ' + status);
      this.status = status;
      this.body = body || {};
    }
  }

  /** One API call: JSON in and out, the key as a bearer token. Throws ApiError (or a network error). */
  async function api(method, path, { body, headers = {} } = {}) {
    const init = { method, headers: { Authorization: 'Bearer ' + apiKey, ...headers }, cache: 'no-store' };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      init.headers['Content-Type'] = 'application/json';
    }
    const res = await fetch('/api/v1' + path, init);
    let json = null;
    try {
      json = await res.json();
    } catch {
      json = null;
    }
    if (!res.ok) throw new ApiError(res.status, json);
    return { json, status: res.status, etag: res.headers.get('ETag') };
  }

  // ------------------------------------------------------------------ status, log, confirm
  function setStatus(state, text) {
    const el = $('status');
    el.dataset.state = state;
    el.className = 'status ' + (state === 'ok' ? 'connected' : state === 'down' ? 'offline' : state === 'refused' ? 'refused' : '');
    el.querySelector('.text').textContent = text;
  }

  function log(kind, message) {
    const li = h('li', { class: kind }, h('span', { class: 'lt', text: clock() }), h('span', { class: 'lm', text: message }));
    $('log').prepend(li);
    while ($('log').children.length > 100) $('log').lastChild.remove();
    const toast = $('toast');
    toast.textContent = message;
    toast.className = 'toast show ' + (kind === 'ok' ? 'ok' : '');
    clearTimeout(log.timer);
    log.timer = setTimeout(() => (toast.className = 'toast'), 3500);
  }

  /** A confirmation in the page's own dialog: resolves true on Confirm. */
  function confirmAction(title, text, label) {
    const dlg = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = label || 'Confirm';
    return new Promise((resolve) => {
      dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
      dlg.returnValue = '';
      dlg.showModal();
    });
  }

  const describe = (err) => (err instanceof ApiError ? `${err.status} ${err.body.error || ''}: ${err.message}` : 'network: ' + err.message);

  // ------------------------------------------------------------------ sign in
  function showSignin(message, kind) {
    stopPolling();
    $('signin').hidden = false;
    $('app').hidden = true;
    $('signout').hidden = true;
    $('compact').hidden = true;
    const msg = $('signin-msg');
    msg.replaceChildren();
    msg.hidden = !message;
    msg.className = 'msg ' + (kind || '');
    if (message) msg.append(...message);
    $('key').focus();
  }

  function offMessage() {
    return [
      h('strong', { text: 'The HTTP API is off on this relay (404).' }),
      ' Give it a key of at least 16 bytes in the relay\'s configuration, then restart it (or send SIGHUP):',
      h('pre', { text: '[api]\nkey = "a-long-random-key"          # or key_file = "/etc/aether/api-key"\n# or AETHER_API_KEY in the relay\'s environment' }),
    ];
  }

  async function signIn(key) {
    apiKey = key;
    try {
      await api('GET', '/rooms');
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        sessionStorage.removeItem(KEY_STORE);
        setStatus('refused', 'key refused');
        return showSignin([h('strong', { text: 'Refused (401).' }), ' ' + err.message + '. Check the key and paste it again.'], 'bad');
      }
      if (err instanceof ApiError && err.status === 403) {
        sessionStorage.removeItem(KEY_STORE);
        return showSignin([h('strong', { text: 'Forbidden (403).' }), ' ' + err.message + ': the console needs the API key, not a JWT.'], 'bad');
      }
      if (err instanceof ApiError && err.status === 404) {
        sessionStorage.removeItem(KEY_STORE);
        setStatus('down', 'API off');
        return showSignin(offMessage(), 'off');
      }
      return showSignin([h('strong', { text: 'Cannot reach the relay.' }), ' ' + describe(err)], 'bad');
    }
    sessionStorage.setItem(KEY_STORE, key);
    $('signin').hidden = true;
    $('app').hidden = false;
    $('signout').hidden = false;
    $('compact').hidden = false;
    setStatus('ok', 'connected');
    log('ok', 'signed in');
    startPolling();
  }

  $('signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key').value.trim();
    $('key').value = '';
    if (key) signIn(key);
  });
  $('signout').addEventListener('click', () => {
    sessionStorage.removeItem(KEY_STORE);
    apiKey = null;
    setStatus('signed-out', 'signed out');
    showSignin(null);
  });

  // ------------------------------------------------------------------ polling
  const timers = [];
  function every(ms, fn) {
    let stopped = false;
    let t = null;
    const run = async () => {
      if (stopped) return;
      try {
        await fn();
      } catch (err) {
        onPollError(err);
      }
      if (!stopped) t = setTimeout(run, ms);
    };
    run();
    timers.push(() => {
      stopped = true;
      clearTimeout(t);
    });
  }
  function startPolling() {
    stopPolling();
    every(ROOMS_EVERY, refreshRooms);
    every(ROOM_EVERY, refreshRoom);
    every(METRICS_EVERY, refreshMetrics);
  }
  function stopPolling() {
    while (timers.length) timers.pop()();
    stopFeed();
    view.room = null;
  }
  function onPollError(err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(KEY_STORE);
      setStatus('refused', 'key refused');
      showSignin([h('strong', { text: 'Refused (401).' }), ' ' + err.message + '. The key changed on the relay?'], 'bad');
    } else if (err instanceof ApiError && err.status === 404 && err.body.error === 'not_found') {
      setStatus('down', 'API off');
      showSignin(offMessage(), 'off');
    } else if (!(err instanceof ApiError)) {
      setStatus('down', 'relay unreachable');
    }
  }

  // ------------------------------------------------------------------ rooms and clients
  const view = {
    rooms: [],
    room: null, // the selected room, as written (`_` for the default room)
    keys: new Map(), // key -> JSON text, the live state shown
    key: null, // the selected key
    keyStamp: null,
    history: [],
    at: null, // null: live; else the moment shown, ns since 1970 as a string
  };

  const roomLabel = (name) => (name === '_' ? '_ (default room)' : name);

  async function refreshRooms() {
    const [{ json }, { json: conns }] = await Promise.all([api('GET', '/rooms'), api('GET', '/clients')]);
    setStatus('ok', 'connected');
    $('updated').textContent = 'updated ' + clock();
    view.rooms = json.rooms;
    const list = $('rooms');
    list.replaceChildren(
      ...json.rooms.map((r) =>
        h(
          'li',
          { class: r.room === view.room ? 'sel' : '', dataset: { room: r.room }, title: r.room, onclick: () => selectRoom(r.room) },
          h('span', { class: 'live-dot' + (r.members ? ' on' : '') }),
          h('span', { class: 'rname', text: roomLabel(r.room) }),
          h('span', { class: 'meta', text: `${r.keys} keys · ${r.members} online` }),
        ),
      ),
    );
    $('rooms-count').textContent = String(json.rooms.length);
    renderClients(conns.clients);
    renderRoomHead();
  }

  /** Every connection (GET /api/v1/clients): address, protocol version, user, room; a click on the room selects it. */
  function renderClients(clients) {
    $('clients-count').textContent = String(clients.length);
    $('clients').tBodies[0].replaceChildren(
      ...(clients.length
        ? clients.map((c) =>
            h(
              'tr',
              { dataset: { id: c.id, room: c.room }, title: 'connection ' + c.id },
              h('td', { text: c.address }),
              h('td', { text: 'v' + c.protocol }),
              h('td', { text: c.user === null ? '—' : c.user }),
              h('td', { class: 'link', text: roomLabel(c.room), onclick: () => selectRoom(c.room) }),
            ),
          )
        : [h('tr', {}, h('td', { colspan: 4, class: 'dim', text: 'no clients connected' }))]),
    );
  }

  function renderRoomHead() {
    const r = view.rooms.find((x) => x.room === view.room);
    $('disconnect-all').hidden = !view.room;
    $('disconnect-all').disabled = !r || !r.members;
    const users = $('room-users');
    users.replaceChildren(
      ...(r ? r.users : []).map((u) =>
        h('span', { class: 'chip', dataset: { user: u } }, u, h('button', { class: 'danger small', title: 'disconnect ' + u, onclick: () => disconnect(u) }, 'disconnect')),
      ),
    );
    if (r && r.members) users.prepend(h('span', { class: 'chip plain', text: `${r.members} online · v1 ${r.v1} · v2 ${r.v2}` }));
    users.hidden = !users.children.length;
  }

  function selectRoom(name) {
    if (view.room === name) return;
    view.room = name;
    view.keys = new Map();
    view.at = null;
    selectKey(null);
    for (const li of $('rooms').children) li.classList.toggle('sel', li.dataset.room === name);
    $('room-title').textContent = 'Room ' + roomLabel(name);
    $('timeline').hidden = false;
    $('keys').tBodies[0].replaceChildren();
    setLive();
    renderRoomHead();
    follow(name);
    refreshRoom().catch(onPollError);
  }

  // ------------------------------------------------------------------ the change feed
  // GET /api/v1/rooms/{room}/changes (Server-Sent Events), read with fetch so the key goes in the
  // Authorization header, not in the URL. It keeps the room's keys live; when the stream ends it
  // resumes with ?since=<last id> (a delta, nothing missed). A relay without the feed answers 404:
  // then the room is polled every second.
  let feed = null;
  const pause = (ms) => new Promise((r) => setTimeout(r, ms));

  function follow(room) {
    stopFeed();
    const f = { room, ctl: new AbortController(), lastId: null, live: false, keys: new Map() };
    feed = f;
    runFeed(f);
  }
  function stopFeed() {
    if (feed) feed.ctl.abort();
    feed = null;
    setFeedMode(null);
  }
  function setFeedMode(f) {
    const tag = $('room-live');
    tag.hidden = !view.room;
    tag.dataset.mode = f && f.live ? 'feed' : 'poll';
    tag.textContent = f && f.live ? 'live · change feed' : 'live · polled every 1 s';
    tag.title = f && f.live ? 'following GET /api/v1/rooms/{room}/changes' : 'GET /api/v1/rooms/{room} every second';
  }

  async function runFeed(f) {
    let backoff = 500;
    while (feed === f) {
      try {
        const url = `/api/v1/rooms/${seg(f.room)}/changes` + (f.lastId ? '?since=' + encodeURIComponent(f.lastId) : '');
        const res = await fetch(url, { headers: { Authorization: 'Bearer ' + apiKey, Accept: 'text/event-stream' }, signal: f.ctl.signal, cache: 'no-store' });
        if (res.status === 404 || res.status === 405) {
          await res.body?.cancel();
          setFeedMode(null); // no change feed on this relay: polling
          return;
        }
        if (!res.ok || !res.body) {
          let body = null;
          try {
            body = await res.json();
          } catch {
            body = null;
          }
          throw new ApiError(res.status, body);
        }
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done || feed !== f) break;
          buf += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            if (onFeedEvent(f, block)) backoff = 500;
          }
        }
      } catch (err) {
        if (feed !== f) return;
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return onPollError(err);
      }
      if (feed !== f) return;
      f.live = false;
      setFeedMode(f);
      await pause(backoff);
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  /** One SSE event block; true when it was a state event. */
  function onFeedEvent(f, block) {
    let event = 'message';
    let id = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return false;
    let msg;
    try {
      msg = JSON.parse(data.join('\n'));
    } catch {
      return false;
    }
    if (id) f.lastId = id;
    if (event === 'snapshot') f.keys = new Map(Object.entries(msg.keys || {}));
    else if (event === 'delta') {
      for (const [k, v] of Object.entries(msg.keys || {})) f.keys.set(k, v);
      for (const k of msg.deleted || []) f.keys.delete(k);
    } else if (event === 'set') f.keys.set(msg.key, msg.value);
    else if (event === 'delete') f.keys.delete(msg.key);
    else if (event === 'resync') {
      log('ok', `change feed: full resync (${msg.reason})`);
      return false;
    } else {
      if (event === 'error') log('err', `change feed ended: ${msg.reason}; resuming`);
      return false;
    }
    if (!f.live) {
      f.live = true;
      setFeedMode(f);
    }
    if (view.room === f.room && view.at === null) showLive(Object.fromEntries(f.keys));
    return true;
  }

  // ------------------------------------------------------------------ a room's keys, live
  async function refreshRoom() {
    if (!view.room || view.at !== null || (feed && feed.live && feed.room === view.room)) return;
    const room = view.room;
    let json;
    try {
      ({ json } = await api('GET', '/rooms/' + seg(room)));
    } catch (err) {
      if (err instanceof ApiError && err.body.error === 'unknown_room') json = { room, keys: {}, members: 0 };
      else throw err;
    }
    if (room !== view.room || view.at !== null) return;
    showLive(json.keys);
  }

  /** Shows `keys` as the selected room's live state; reloads the selected key if its value changed. */
  function showLive(keys) {
    const json = { keys };
    renderKeys(json.keys, true);
    if (view.key !== null) {
      const now = Object.prototype.hasOwnProperty.call(json.keys, view.key) ? JSON.stringify(json.keys[view.key]) : null;
      if (now !== view.shownValue && !view.loadingKey) loadKey(view.key).catch(onPollError);
    }
  }

  /** Renders `keys` ({key: value}); `live` marks changed rows (flash) against the previous render. */
  function renderKeys(keys, live) {
    const body = $('keys').tBodies[0];
    const names = Object.keys(keys).sort();
    const before = view.keys;
    const next = new Map(names.map((k) => [k, JSON.stringify(keys[k])]));
    const same = names.length === before.size && names.every((k) => before.get(k) === next.get(k));
    if (same && body.children.length === names.length && body.dataset.mode === (live ? 'live' : 'past')) return;
    body.dataset.mode = live ? 'live' : 'past';
    body.replaceChildren(
      ...names.map((k) => {
        const changed = live && before.size && before.get(k) !== next.get(k);
        return h(
          'tr',
          { class: (k === view.key ? 'sel ' : '') + (changed ? 'flash' : ''), dataset: { key: k }, onclick: () => selectKey(k) },
          h('td', { class: 'k', text: k }),
          h('td', { class: 'v', text: short(keys[k]) }),
        );
      }),
    );
    view.keys = next;
    $('keys-empty').hidden = names.length > 0;
    $('keys-empty').textContent = live ? 'This room holds no keys.' : 'The room held no keys at that moment.';
  }

  // ------------------------------------------------------------------ a key: value, stamp, history
  function selectKey(key) {
    view.key = key;
    view.keyStamp = null;
    view.shownValue = undefined;
    for (const tr of $('keys').tBodies[0].children) tr.classList.toggle('sel', tr.dataset.key === key);
    $('delete-key').hidden = true;
    if (key === null) {
      $('key-detail').replaceChildren(h('p', { class: 'empty', text: 'Pick a key to see its value and history.' }));
      $('history').replaceChildren();
      $('history-note').textContent = '';
      return;
    }
    loadKey(key).catch(onPollError);
  }

  async function loadKey(key) {
    view.loadingKey = true;
    try {
      await readKey(key);
    } finally {
      view.loadingKey = false;
    }
  }

  async function readKey(key) {
    const room = view.room;
    let current = null;
    try {
      const { json } = await api('GET', `/rooms/${seg(room)}/keys/${keyPath(key)}`);
      current = json;
    } catch (err) {
      if (!(err instanceof ApiError && (err.body.error === 'no_such_key' || err.body.error === 'unknown_room'))) throw err;
    }
    let hist = null;
    try {
      ({ json: hist } = await api('GET', `/rooms/${seg(room)}/keys/${keyPath(key)}/history?limit=200`));
    } catch (err) {
      log('err', 'history of ' + key + ': ' + describe(err));
    }
    if (view.key !== key || view.room !== room) return;
    view.keyStamp = current ? current.stamp : null;
    view.shownValue = current ? JSON.stringify(current.value) : null;
    const detail = $('key-detail');
    detail.replaceChildren(
      h('div', { class: 'kname', text: key }),
      current ? h('pre', { id: 'key-value', text: JSON.stringify(current.value, null, 2) }) : h('pre', { id: 'key-value', class: 'dim', text: '(no value: deleted or never written)' }),
      h('div', { class: 'stamp', id: 'key-stamp', text: current ? 'stamp ' + current.stamp : '' }),
    );
    $('delete-key').hidden = !current;
    view.history = hist ? hist.writes : [];
    renderHistory(hist);
  }

  /** ns since 1970 (a string) of a write: the physical part of its stamp. */
  const stampNs = (stamp) => String(BigInt(stamp.split('.')[0]));

  function renderHistory(hist) {
    const ol = $('history');
    if (!hist) return ol.replaceChildren();
    $('history-note').textContent = `${hist.writes.length} write${hist.writes.length === 1 ? '' : 's'}${hist.truncated ? ' (newest shown)' : ''}`;
    ol.replaceChildren(
      ...hist.writes
        .slice()
        .reverse()
        .map((w) =>
          h(
            'li',
            { class: (w.op === 'del' ? 'del ' : '') + (w.current ? 'current' : ''), dataset: { stamp: w.stamp }, title: 'show the room at ' + w.time, onclick: () => showAt(stampNs(w.stamp)) },
            h('span', { class: 'mark' }),
            h('span', { class: 't' }, h('b', { text: w.time.replace('T', ' ').replace(/\.(\d{3})\d*Z$/, '.$1Z') }), ` · ${w.op}${w.by ? ' by ' + w.by : ''}${w.current ? ' · current' : ''}`),
            h('span', { class: 'hv', text: w.op === 'del' ? 'deleted' : short(w.value, 120) }),
          ),
        ),
    );
    updateSliderRange();
  }

  // ------------------------------------------------------------------ the time slider
  // The slider runs from the selected key's first write (or five minutes ago) to now, in ms; its
  // right end is "live". Moving it shows the room as it was (GET /rooms/{room}?at=<ns>).
  const slider = $('slider');
  let sliderStart = 0n; // ns
  let sliderEnd = 0n; // ns (the moment the range was set)

  function updateSliderRange() {
    const nowNs = BigInt(Date.now()) * 1000000n;
    const first = view.history.length ? BigInt(stampNs(view.history[0].stamp)) : nowNs - 300n * 1000000000n;
    sliderStart = first < nowNs ? first : nowNs - 1000000000n;
    sliderEnd = nowNs;
    slider.max = String(Number((sliderEnd - sliderStart) / 1000000n) + 1);
    if (view.at === null) slider.value = slider.max;
    else placeSlider(BigInt(view.at));
  }
  function placeSlider(ns) {
    const ms = ns <= sliderStart ? 0n : (ns - sliderStart) / 1000000n;
    slider.value = String(ms);
  }

  function setLive() {
    view.at = null;
    $('room-panel').classList.remove('room-past');
    $('room-mode').hidden = true;
    $('live').hidden = true;
    $('slider-label').textContent = 'live';
    setFeedMode(feed);
    updateSliderRange();
    for (const li of $('history').children) li.classList.remove('sel');
  }

  let atSeq = 0;
  /** Shows the room at `ns` (a string of ns since 1970). */
  async function showAt(ns) {
    if (!view.room) return;
    const my = ++atSeq;
    view.at = ns;
    if (BigInt(ns) > sliderEnd) updateSliderRange();
    placeSlider(BigInt(ns));
    for (const li of $('history').children) li.classList.toggle('sel', stampNs(li.dataset.stamp) === ns);
    try {
      const { json } = await api('GET', `/rooms/${seg(view.room)}?at=${ns}`);
      if (my !== atSeq || view.at !== ns) return;
      $('room-panel').classList.add('room-past');
      $('room-mode').hidden = false;
      $('room-mode').className = 'tag past';
      $('room-mode').textContent = 'as it was';
      $('room-live').hidden = true;
      $('live').hidden = false;
      $('slider-label').textContent = json.at;
      $('slider-label').dataset.at = json.at;
      renderKeys(json.keys, false);
    } catch (err) {
      if (my !== atSeq) return;
      $('slider-label').textContent = describe(err);
      log('err', 'room at a moment: ' + describe(err));
    }
  }

  let sliderTimer = null;
  slider.addEventListener('input', () => {
    if (!view.room) return;
    clearTimeout(sliderTimer);
    if (Number(slider.value) >= Number(slider.max)) {
      backToLive();
      return;
    }
    const ns = String(sliderStart + BigInt(slider.value) * 1000000n + 999999n);
    view.at = ns;
    sliderTimer = setTimeout(() => showAt(ns), 120);
  });
  function backToLive() {
    setLive();
    view.keys = new Map();
    if (feed && feed.live && feed.room === view.room) showLive(Object.fromEntries(feed.keys));
    else refreshRoom().catch(onPollError);
  }
  $('live').addEventListener('click', backToLive);

  // ------------------------------------------------------------------ actions
  $('delete-key').addEventListener('click', async () => {
    const key = view.key;
    const room = view.room;
    const stamp = view.keyStamp;
    if (key === null || !stamp) return;
    const ok = await confirmAction('Delete a key', `Delete "${key}" in room ${roomLabel(room)}?\nOnly if it still holds the write stamped ${stamp}.`, 'Delete');
    if (!ok) return;
    try {
      const { json } = await api('DELETE', `/rooms/${seg(room)}/keys/${keyPath(key)}`, { headers: { 'If-Match': `"${stamp}"` } });
      log('ok', `deleted "${key}" in ${roomLabel(room)} (stamp ${json.stamp})`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 412) log('err', `"${key}" changed since it was shown (now ${err.body.stamp}); not deleted`);
      else log('err', `delete "${key}": ${describe(err)}`);
    }
    if (view.key === key) loadKey(key).catch(onPollError);
    refreshRoom().catch(onPollError);
  });

  async function disconnect(user) {
    const room = view.room;
    if (!room) return;
    const what = user === undefined ? `everyone in room ${roomLabel(room)}` : `user "${user}" in room ${roomLabel(room)}`;
    const ok = await confirmAction('Disconnect', `Close the connections of ${what}? They may reconnect while their token is valid.`, 'Disconnect');
    if (!ok) return;
    try {
      const { json } = await api('POST', `/rooms/${seg(room)}/disconnect`, { body: user === undefined ? {} : { user } });
      log('ok', `disconnected ${json.disconnected} connection${json.disconnected === 1 ? '' : 's'} (${what})`);
    } catch (err) {
      log('err', `disconnect ${what}: ${describe(err)}`);
    }
    refreshRooms().catch(onPollError);
  }
  $('disconnect-all').addEventListener('click', () => disconnect(undefined));

  $('compact').addEventListener('click', async () => {
    const ok = await confirmAction('Compact now', 'Fold the ledger into a snapshot and archive the old file now? Writes go on meanwhile.', 'Compact');
    if (!ok) return;
    const button = $('compact');
    button.disabled = true;
    button.textContent = 'Compacting…';
    try {
      const { json, status } = await api('POST', '/compact');
      if (status === 202) log('ok', 'compaction still running after two minutes; it goes on');
      else log('ok', `compacted in ${json.elapsed_ms.toFixed(1)} ms: snapshot ${fmtBytes(json.snapshot_bytes)}, folded ${fmtBytes(json.folded_bytes)}, archive ${json.archive}`);
    } catch (err) {
      log('err', 'compact: ' + describe(err));
    } finally {
      button.disabled = false;
      button.textContent = 'Compact now';
    }
  });

  // ------------------------------------------------------------------ /metrics and /healthz
  /** Prometheus text → Map(name → [{labels, value}]). */
  function parseMetrics(text) {
    const out = new Map();
    for (const line of text.split('\n')) {
      if (!line || line.startsWith('#')) continue;
      const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
      if (!m) continue;
      const labels = {};
      if (m[3]) for (const l of m[3].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
      const value = m[4] === '+Inf' ? Infinity : Number(m[4]);
      if (!out.has(m[1])) out.set(m[1], []);
      out.get(m[1]).push({ labels, value });
    }
    return out;
  }
  const one = (metrics, name) => ((metrics.get(name) || [])[0] || { value: NaN }).value;

  /** The q-quantile (seconds) of the observations between two histogram samples, by interpolation in buckets. */
  function quantile(prev, cur, name, q) {
    const buckets = (m) => new Map((m.get(name + '_bucket') || []).map((b) => [b.labels.le, b.value]));
    const a = buckets(prev);
    const b = buckets(cur);
    const rows = [...b.entries()].map(([le, v]) => [le === '+Inf' ? Infinity : Number(le), v - (a.get(le) || 0)]).sort((x, y) => x[0] - y[0]);
    const total = rows.length ? rows[rows.length - 1][1] : 0;
    if (!(total > 0)) return null;
    const want = q * total;
    let lo = 0;
    let below = 0;
    for (const [le, n] of rows) {
      if (n >= want) {
        if (le === Infinity) return lo;
        return lo + (le - lo) * ((want - below) / Math.max(n - below, 1e-9));
      }
      lo = le;
      below = n;
    }
    return lo;
  }

  const CHARTS = [
    { id: 'connections', name: 'Connections', unit: '', fmt: (v) => String(Math.round(v)) },
    { id: 'writes', name: 'Durable writes/s', unit: '/s', fmt: (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(1)) },
    { id: 'latency', name: 'Ledger append p99 · mean', unit: 'ms', fmt: (v) => (v >= 10 ? v.toFixed(1) : v.toFixed(2)) },
    { id: 'pending', name: 'Writes waiting for the disk', unit: '', fmt: (v) => String(Math.round(v)) },
  ];
  const series = Object.fromEntries(CHARTS.map((c) => [c.id, { a: [], b: [] }]));

  function buildCharts() {
    $('charts').replaceChildren(
      ...CHARTS.map((c) => {
        const s = svg('svg', { viewBox: `0 0 ${CHART_POINTS - 1} 100`, preserveAspectRatio: 'none', role: 'img', 'aria-label': c.name });
        s.append(svg('line', { class: 'base', x1: 0, y1: 99.5, x2: CHART_POINTS - 1, y2: 99.5 }), svg('polygon', { class: 'area' }), svg('polyline', { class: 'line' }), svg('polyline', { class: 'line2' }));
        return h('div', { class: 'chart', id: 'chart-' + c.id }, h('div', { class: 'head' }, h('span', { class: 'name', text: c.name }), h('span', { class: 'val', text: '–' })), s, h('div', { class: 'sub', text: 'waiting for samples' }));
      }),
    );
  }

  function drawChart(c) {
    const el = $('chart-' + c.id);
    const { a, b } = series[c.id];
    const all = a.concat(b).filter((v) => Number.isFinite(v));
    const max = Math.max(1e-9, ...all) * 1.15;
    const off = CHART_POINTS - a.length;
    const pts = (arr) => arr.map((v, i) => `${off + i},${(100 - (Number.isFinite(v) ? v : 0) / max * 96).toFixed(2)}`).join(' ');
    el.querySelector('.line').setAttribute('points', pts(a));
    el.querySelector('.area').setAttribute('points', a.length ? `${off},100 ${pts(a)} ${CHART_POINTS - 1},100` : '');
    el.querySelector('.line2').setAttribute('points', b.length ? pts(b) : '');
    const last = a[a.length - 1];
    el.querySelector('.val').textContent = Number.isFinite(last) ? c.fmt(last) + (c.unit && c.unit !== '/s' ? ' ' + c.unit : '') : '–';
    const peak = Math.max(...a.filter(Number.isFinite), 0);
    el.querySelector('.sub').textContent = c.id === 'latency' && b.length && Number.isFinite(b[b.length - 1]) ? `mean ${c.fmt(b[b.length - 1])} ms · peak p99 ${c.fmt(peak)} ms` : `peak ${c.fmt(peak)}${c.unit === '/s' ? '/s' : ''} · last ${a.length * METRICS_EVERY / 1000} s`;
  }

  function push(id, v, v2) {
    const s = series[id];
    s.a.push(v);
    if (v2 !== undefined) s.b.push(v2);
    if (s.a.length > CHART_POINTS) s.a.shift();
    if (s.b.length > CHART_POINTS) s.b.shift();
  }

  let prevMetrics = null;
  let prevAt = 0;
  async function refreshMetrics() {
    const [mres, hres] = await Promise.all([fetch('/metrics', { cache: 'no-store' }), fetch('/healthz', { cache: 'no-store' })]);
    const metrics = parseMetrics(await mres.text());
    let health = null;
    try {
      health = await hres.json();
    } catch {
      health = null;
    }
    const now = performance.now();
    push('connections', one(metrics, 'aether_connections'));
    push('pending', one(metrics, 'aether_pending_writes'));
    if (prevMetrics) {
      const dt = (now - prevAt) / 1000;
      const dw = one(metrics, 'aether_durable_writes_total') - one(prevMetrics, 'aether_durable_writes_total');
      push('writes', dt > 0 && dw >= 0 ? dw / dt : 0);
      const dn = one(metrics, 'aether_ledger_append_seconds_count') - one(prevMetrics, 'aether_ledger_append_seconds_count');
      const ds = one(metrics, 'aether_ledger_append_seconds_sum') - one(prevMetrics, 'aether_ledger_append_seconds_sum');
      const p99 = quantile(prevMetrics, metrics, 'aether_ledger_append_seconds', 0.99);
      push('latency', p99 === null ? 0 : p99 * 1000, dn > 0 ? (ds / dn) * 1000 : 0);
    }
    prevMetrics = metrics;
    prevAt = now;
    for (const c of CHARTS) drawChart(c);
    renderMesh(health, metrics);
  }

  function renderMesh(health, metrics) {
    const mesh = health && health.mesh;
    $('mesh-panel').hidden = !mesh;
    if (!mesh) return;
    $('mesh-node').textContent = 'this node ' + mesh.node;
    const lag = new Map((metrics.get('aether_mesh_peer_lag_seconds') || []).map((s) => [s.labels.peer, s.value]));
    const peers = mesh.peers || [];
    $('mesh').tBodies[0].replaceChildren(
      ...(peers.length
        ? peers.map((p) =>
            h(
              'tr',
              { dataset: { peer: p.node } },
              h('td', { text: p.node }),
              h('td', { text: p.connected ? 'up' : 'down', class: p.connected ? '' : 'dim' }),
              h('td', { text: lag.has(p.node) ? (lag.get(p.node) * 1000).toFixed(1) + ' ms' : '—' }),
              h('td', { text: `${p.ops_in} / ${p.ops_out}` }),
            ),
          )
        : [h('tr', {}, h('td', { colspan: 4, class: 'dim', text: 'no peers yet' }))]),
    );
  }

  // ------------------------------------------------------------------ start
  $('relay-host').textContent = location.host;
  buildCharts();
  window.aetherConsole = { view, parseMetrics, quantile };
  if (apiKey) signIn(apiKey);
  else showSignin(null);
})();

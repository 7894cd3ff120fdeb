/* Network topology diagrammer on aether-actix: every device, wire and cursor is live in every tab.
 * Keys (compatible with upstream Aether-Core's demo):
 *   node:<uuid>:type   one of TYPES        node:<uuid>:label  string
 *   node:<uuid>:coords {x, y} (centre)     link:<uuid>        {from, to, speed}
 * Every string that comes from the data goes into the DOM through textContent or setAttribute. */
(function () {
  'use strict';

  const W = 1920, H = 1080;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const SPEEDS = ['1Gbps', '10Gbps', '25Gbps', '40Gbps', '100Gbps'];
  const DEFAULT_SPEED = '10Gbps';
  const CURSOR_TTL_MS = 8000;
  const LABEL_DEBOUNCE_MS = 500;

  // Icons are constant markup (24×24, stroke = currentColor); never built from data.
  const TYPES = {
    firewall: { name: 'Firewall', def: 'Edge Firewall', color: '#ef4444',
      icon: '<path d="M12 3l7 3v5c0 4.5-3 8.2-7 10-4-1.8-7-5.5-7-10V6l7-3z"/><path d="M9 12l2 2 4-4"/>' },
    switch: { name: 'Core Switch', def: 'Core Switch', color: '#3b82f6',
      icon: '<rect x="2.5" y="9" width="19" height="6" rx="1.2"/><path d="M6 9V6M10 9V6M14 9V6M18 9V6M6 15v3M10 15v3M14 15v3M18 15v3"/><path d="M6 12h.01M9 12h.01M12 12h.01M15 12h.01M18 12h.01"/>' },
    nas: { name: 'NAS Unit', def: 'NAS Unit', color: '#10b981',
      icon: '<rect x="3" y="4" width="18" height="4.5" rx="1"/><rect x="3" y="9.75" width="18" height="4.5" rx="1"/><rect x="3" y="15.5" width="18" height="4.5" rx="1"/><path d="M6 6.25h.01M6 12h.01M6 17.75h.01M14 6.25h4M14 12h4M14 17.75h4"/>' },
    server: { name: 'App Server', def: 'App Server', color: '#a855f7',
      icon: '<rect x="5" y="2.5" width="14" height="19" rx="1.5"/><path d="M8 6.5h8M8 9.5h8M8 12.5h8M8 17h.01M11 17h.01"/>' },
    router: { name: 'Router', def: 'Edge Router', color: '#f59e0b',
      icon: '<rect x="3" y="12" width="18" height="7" rx="1.5"/><path d="M7 12L5 5M17 12l2-7M7 15.5h.01M10 15.5h.01M13 15.5h.01M16 15.5h.01"/>' },
    lb: { name: 'Load Balancer', def: 'Load Balancer', color: '#06b6d4',
      icon: '<circle cx="12" cy="4.5" r="2"/><circle cx="5" cy="19" r="2"/><circle cx="12" cy="19" r="2"/><circle cx="19" cy="19" r="2"/><path d="M12 6.5V17M11 6.3L5.8 17.2M13 6.3l5.2 10.9"/>' },
    vapt: { name: 'VAPT Endpoint', def: 'VAPT Scanner', color: '#ec4899',
      icon: '<circle cx="10.5" cy="10.5" r="6.5"/><path d="M15.3 15.3L21 21M10.5 7.5v6M7.5 10.5h6"/>' },
    proxy: { name: 'Proxy Server', def: 'Forward Proxy', color: '#eab308',
      icon: '<rect x="7" y="2.5" width="10" height="5" rx="1"/><rect x="2.5" y="9.5" width="19" height="5" rx="1"/><rect x="7" y="16.5" width="10" height="5" rx="1"/><path d="M12 7.5v2M12 14.5v2M6 12h.01M9 12h.01"/>' },
  };
  const ICON_SVG = {};
  for (const t of Object.keys(TYPES)) {
    ICON_SVG[t] = '<svg viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="1.7" stroke-linecap="round" stroke-linejoin="round" aria-hidden="true">' + TYPES[t].icon + '</svg>';
  }
  /** A fresh icon element for a known type (the markup is a constant of this file). */
  function icon(type) {
    const tpl = document.createElement('template');
    tpl.innerHTML = ICON_SVG[Object.prototype.hasOwnProperty.call(TYPES, type) ? type : 'server'];
    return tpl.content.firstChild;
  }
  function isType(t) { return typeof t === 'string' && Object.prototype.hasOwnProperty.call(TYPES, t); }

  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  };
  const svg = (tag, attrs) => {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  };
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
  const uuid = () => {
    if (window.crypto && typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    const b = new Uint8Array(16);
    (window.crypto || { getRandomValues: (a) => a.map(() => Math.random() * 256) }).getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return h.slice(0, 8) + '-' + h.slice(8, 12) + '-' + h.slice(12, 16) + '-' + h.slice(16, 20) + '-' + h.slice(20);
  };

  // ---- connection -----------------------------------------------------------------------------
  function relayUrl() {
    const q = new URLSearchParams(location.search).get('relay');
    if (q && /^wss?:\/\//i.test(q)) return q;
    return (location.protocol === 'https:' ? 'wss' : 'ws') + '://' + location.host + '/ws';
  }
  // The topology lives in the relay's default room (upstream's keys, shared with upstream mesh
  // peers) unless the page URL says `?room=NAME`.
  function roomName() {
    return new URLSearchParams(location.search).get('room') || null;
  }
  const url = relayUrl();
  const room = roomName();
  const aether = new Aether(url, room === null ? undefined : { room });
  {
    const el = document.getElementById('room');
    el.textContent = room === null ? 'default room' : 'room ' + room;
    el.dataset.room = room === null ? '' : room;
  }
  window.aether = aether;

  // ---- model (derived from the synced map) ----------------------------------------------------
  /** id -> {id, type, label, x, y} for renderable nodes; id -> {id, from, to, speed} for links. */
  let nodes = new Map();
  let links = new Map();

  function readModel() {
    const raw = new Map();
    const ls = new Map();
    for (const key of aether.keys()) {
      let m = /^node:(.+):(type|label|coords)$/.exec(key);
      if (m) {
        const n = raw.get(m[1]) || { id: m[1] };
        n[m[2]] = aether.get(key);
        raw.set(m[1], n);
        continue;
      }
      m = /^link:(.+)$/.exec(key);
      if (m) {
        const v = aether.get(key);
        if (v && typeof v === 'object' && typeof v.from === 'string' && typeof v.to === 'string') {
          ls.set(m[1], { id: m[1], from: v.from, to: v.to, speed: v.speed == null ? '' : String(v.speed) });
        }
      }
    }
    const ns = new Map();
    for (const [id, r] of raw) {
      if (!isType(r.type)) continue;
      const c = r.coords && typeof r.coords === 'object' ? r.coords : {};
      const x = Number.isFinite(c.x) ? clamp(c.x, 0, W) : 100;
      const y = Number.isFinite(c.y) ? clamp(c.y, 0, H) : 100;
      const label = typeof r.label === 'string' && r.label.trim() !== '' ? r.label : TYPES[r.type].def;
      ns.set(id, { id, type: r.type, label, rawLabel: typeof r.label === 'string' ? r.label : '', x, y });
    }
    for (const [id, l] of ls) if (!ns.has(l.from) || !ns.has(l.to) || l.from === l.to) ls.delete(id);
    nodes = ns;
    links = ls;
  }

  // ---- UI state -------------------------------------------------------------------------------
  let selected = null;        // {kind: 'node'|'link', id}
  let connectFrom = null;     // node id while in connect mode
  let drag = null;            // {id, dx, dy, x, y, moved, startX, startY}
  let suppressClick = false;
  let pendingCoords = null;   // {id, x, y} waiting for the next animation frame
  let coordsFrame = 0;
  let mouse = { x: 0, y: 0 }; // last pointer position in stage coordinates
  let renderQueued = false;

  const viewport = $('viewport');
  const stage = $('stage');
  const nodesLayer = $('nodes');
  const linksLayer = $('links');
  const rubber = $('rubber');
  const nodeEls = new Map();
  const linkEls = new Map();

  function stagePoint(ev) {
    const r = stage.getBoundingClientRect();
    return { x: ev.clientX - r.left, y: ev.clientY - r.top };
  }

  // ---- writes ---------------------------------------------------------------------------------
  function addDevice(type) {
    const id = uuid();
    const jitter = () => Math.round((Math.random() * 2 - 1) * 30);
    const x = clamp(Math.round(viewport.scrollLeft + viewport.clientWidth / 2) + jitter(), 40, W - 40);
    const y = clamp(Math.round(viewport.scrollTop + viewport.clientHeight / 2) + jitter(), 40, H - 40);
    aether.set('node:' + id + ':type', type);
    aether.set('node:' + id + ':label', TYPES[type].def);
    aether.set('node:' + id + ':coords', { x, y });
    connectFrom = null;
    selected = { kind: 'node', id };
    scheduleRender(true);
    return id;
  }

  function deleteNode(id) {
    for (const l of links.values()) if (l.from === id || l.to === id) aether.delete('link:' + l.id);
    // Also links whose other end does not render (they would dangle forever otherwise).
    for (const key of aether.keys()) {
      if (!key.startsWith('link:')) continue;
      const v = aether.get(key);
      if (v && (v.from === id || v.to === id)) aether.delete(key);
    }
    aether.delete('node:' + id + ':type');
    aether.delete('node:' + id + ':label');
    aether.delete('node:' + id + ':coords');
  }

  function deleteSelected() {
    if (!selected) return;
    if (selected.kind === 'node') deleteNode(selected.id);
    else aether.delete('link:' + selected.id);
    selected = null;
    connectFrom = null;
    scheduleRender(true);
  }

  function linked(a, b) {
    for (const l of links.values()) if ((l.from === a && l.to === b) || (l.from === b && l.to === a)) return l;
    return null;
  }

  function connect(from, to) {
    if (from === to || !nodes.has(from) || !nodes.has(to)) return false;
    const existing = linked(from, to);
    if (existing) {
      flash('These devices are already connected.');
      selected = { kind: 'link', id: existing.id };
      return false;
    }
    const id = uuid();
    aether.set('link:' + id, { from, to, speed: DEFAULT_SPEED });
    selected = { kind: 'link', id };
    return true;
  }

  function queueCoords(id, x, y) {
    pendingCoords = { id, x: Math.round(x), y: Math.round(y) };
    if (!coordsFrame) coordsFrame = requestAnimationFrame(flushCoords);
  }
  function flushCoords() {
    if (coordsFrame) cancelAnimationFrame(coordsFrame);
    coordsFrame = 0;
    const p = pendingCoords;
    pendingCoords = null;
    if (p && nodes.has(p.id)) aether.set('node:' + p.id + ':coords', { x: p.x, y: p.y });
  }

  let labelTimer = 0;
  function writeLabel(id, value) {
    clearTimeout(labelTimer);
    labelTimer = 0;
    if (!nodes.has(id)) return;
    const v = String(value).slice(0, 80);
    if (aether.get('node:' + id + ':label') !== v) aether.set('node:' + id + ':label', v);
  }

  // ---- rendering ------------------------------------------------------------------------------
  function scheduleRender(panelToo) {
    if (panelToo) panelDirty = true;
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(render);
  }
  let panelDirty = true;

  function render() {
    renderQueued = false;
    readModel();
    if (selected && !(selected.kind === 'node' ? nodes.has(selected.id) : links.has(selected.id))) { selected = null; panelDirty = true; }
    if (connectFrom && !nodes.has(connectFrom)) connectFrom = null;
    renderNodes();
    renderLinks();
    renderRubber();
    $('empty').hidden = nodes.size > 0;
    $('counts').textContent = nodes.size + (nodes.size === 1 ? ' device' : ' devices') + ' · ' + links.size + (links.size === 1 ? ' link' : ' links');
    viewport.classList.toggle('connecting', !!connectFrom);
    $('hint').textContent = connectFrom ? 'Connect mode: click another device to wire it · Esc to cancel' : '';
    renderPanel();
  }

  function renderNodes() {
    for (const [id, e] of nodeEls) if (!nodes.has(id)) { e.remove(); nodeEls.delete(id); }
    for (const n of nodes.values()) {
      let e = nodeEls.get(n.id);
      if (!e || e.dataset.type !== n.type) {
        if (e) e.remove();
        e = el('div', 'node');
        e.dataset.node = n.id;
        e.dataset.type = n.type;
        e.style.setProperty('--tc', TYPES[n.type].color);
        const chip = el('div', 'chip');
        chip.appendChild(icon(n.type));
        e.appendChild(chip);
        e.appendChild(el('div', 'name'));
        e.addEventListener('mousedown', onNodeDown);
        e.addEventListener('click', onNodeClick);
        nodesLayer.appendChild(e);
        nodeEls.set(n.id, e);
      }
      const name = e.lastChild;
      if (name.textContent !== n.label) name.textContent = n.label;
      e.title = n.label + ' (' + TYPES[n.type].name + ')';
      if (!(drag && drag.id === n.id)) placeNode(e, n.x, n.y);
      e.classList.toggle('sel', !!selected && selected.kind === 'node' && selected.id === n.id);
      e.classList.toggle('source', connectFrom === n.id);
      e.classList.toggle('target', !!connectFrom && connectFrom !== n.id);
    }
  }
  function placeNode(e, x, y) {
    e.style.left = x + 'px';
    e.style.top = y + 'px';
  }
  /** Where a node is drawn right now (the local drag position wins). */
  function pos(id) {
    if (drag && drag.id === id) return { x: drag.x, y: drag.y };
    const n = nodes.get(id);
    return n ? { x: n.x, y: n.y } : { x: 0, y: 0 };
  }

  function renderLinks() {
    for (const [id, g] of linkEls) if (!links.has(id)) { g.remove(); linkEls.delete(id); }
    for (const l of links.values()) {
      let g = linkEls.get(l.id);
      if (!g) {
        g = svg('g', { class: 'link' });
        g.dataset.link = l.id;
        g.appendChild(svg('line', { class: 'hit' }));
        g.appendChild(svg('line', { class: 'wire' }));
        g.appendChild(svg('rect', { class: 'tag-bg', rx: 4, ry: 4, height: 16 }));
        g.appendChild(svg('text', { class: 'tag' }));
        g.addEventListener('mousedown', (ev) => ev.stopPropagation());
        g.addEventListener('click', (ev) => {
          ev.stopPropagation();
          if (connectFrom) return;
          selected = { kind: 'link', id: l.id };
          scheduleRender(true);
        });
        linksLayer.appendChild(g);
        linkEls.set(l.id, g);
      }
      const text = g.querySelector('text');
      if (text.textContent !== l.speed) { text.textContent = l.speed; g.dataset.w = ''; }
      g.classList.toggle('sel', !!selected && selected.kind === 'link' && selected.id === l.id);
      placeLink(g, l);
    }
  }
  function placeLink(g, l) {
    const a = pos(l.from), b = pos(l.to);
    for (const line of g.querySelectorAll('line')) {
      line.setAttribute('x1', a.x); line.setAttribute('y1', a.y);
      line.setAttribute('x2', b.x); line.setAttribute('y2', b.y);
    }
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    const text = g.querySelector('text');
    const rect = g.querySelector('rect');
    text.setAttribute('x', mx); text.setAttribute('y', my);
    const w = Math.min(220, 12 + 6.4 * (l.speed.length || 1));
    rect.setAttribute('width', w); rect.setAttribute('x', mx - w / 2); rect.setAttribute('y', my - 8);
    rect.style.display = l.speed ? '' : 'none';
  }
  function relinkNode(id) {
    for (const l of links.values()) if (l.from === id || l.to === id) { const g = linkEls.get(l.id); if (g) placeLink(g, l); }
    renderRubber();
  }
  function renderRubber() {
    if (!connectFrom || !nodes.has(connectFrom)) { rubber.setAttribute('visibility', 'hidden'); return; }
    const a = pos(connectFrom);
    rubber.setAttribute('x1', a.x); rubber.setAttribute('y1', a.y);
    rubber.setAttribute('x2', mouse.x); rubber.setAttribute('y2', mouse.y);
    rubber.setAttribute('visibility', 'visible');
  }

  // ---- properties panel -----------------------------------------------------------------------
  const panel = $('panel');
  function panelBusy() {
    const a = document.activeElement;
    return !!a && panel.contains(a) && (a.tagName === 'INPUT' || a.tagName === 'SELECT');
  }
  function field(label, control) {
    const f = el('div', 'field');
    const l = el('label', null, label);
    if (control.id) l.htmlFor = control.id;
    f.append(l, control);
    return f;
  }
  function ro(text) { return el('div', 'ro', text); }
  function header(type, title, sub) {
    const h = el('div', 'phead');
    const chip = el('div', 'chip');
    chip.style.setProperty('--tc', TYPES[type] ? TYPES[type].color : '#8b98a8');
    if (type) chip.appendChild(icon(type));
    else chip.appendChild(linkIcon());
    const t = el('div', 't');
    t.append(el('b', null, title), el('small', null, sub));
    h.append(chip, t);
    return h;
  }
  function linkIcon() {
    const s = svg('svg', { viewBox: '0 0 24 24', fill: 'none', stroke: 'currentColor', 'stroke-width': '1.7', 'stroke-linecap': 'round' });
    s.appendChild(svg('path', { d: 'M4 20L20 4M4 20h.01M20 4h.01' }));
    s.appendChild(svg('circle', { cx: 4, cy: 20, r: 2 }));
    s.appendChild(svg('circle', { cx: 20, cy: 4, r: 2 }));
    return s;
  }

  let panelSig = null;
  function renderPanel() {
    if (!panelDirty) return;
    let sig = JSON.stringify([selected, connectFrom]);
    if (selected && selected.kind === 'node') {
      const n = nodes.get(selected.id);
      sig += JSON.stringify([n.type, n.label, n.rawLabel, [...links.values()].filter((l) => l.from === n.id || l.to === n.id).length]);
    } else if (selected) {
      const l = links.get(selected.id);
      sig += JSON.stringify([l.speed, nodes.get(l.from).label, nodes.get(l.to).label]);
    }
    const p0 = panel.querySelector('[data-pos]');
    if (p0 && selected && selected.kind === 'node') { const n = pos(selected.id); p0.textContent = 'x ' + n.x + ' · y ' + n.y; }
    if (sig === panelSig && panel.firstChild) { panelDirty = false; return; }
    if (panelBusy()) {
      // Keep what is being typed; refresh only the read-only bits.
      const p = panel.querySelector('[data-pos]');
      if (p && selected && selected.kind === 'node' && nodes.has(selected.id)) { const n = pos(selected.id); p.textContent = 'x ' + n.x + ' · y ' + n.y; }
      return;
    }
    panelDirty = false;
    panelSig = sig;
    panel.textContent = '';
    panel.appendChild(el('h2', null, 'Properties'));
    if (!selected) {
      panel.appendChild(el('div', 'nothing', 'Nothing selected.'));
      panel.appendChild(el('p', 'note', 'Pick a device from the palette, or click one on the canvas to edit it.'));
      return;
    }
    if (selected.kind === 'node') {
      const n = nodes.get(selected.id);
      const id = n.id;
      panel.dataset.kind = 'node';
      panel.appendChild(header(n.type, n.label, TYPES[n.type].name));

      const input = el('input');
      input.id = 'prop-label';
      input.maxLength = 80;
      input.value = n.rawLabel;
      input.placeholder = TYPES[n.type].def;
      input.autocomplete = 'off';
      input.addEventListener('input', () => {
        clearTimeout(labelTimer);
        labelTimer = setTimeout(() => writeLabel(id, input.value), LABEL_DEBOUNCE_MS);
      });
      input.addEventListener('change', () => writeLabel(id, input.value));
      input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') input.blur(); });
      input.addEventListener('blur', () => { writeLabel(id, input.value); panelSig = null; scheduleRender(true); });
      panel.appendChild(field('Label', input));

      const type = el('select');
      type.id = 'prop-type';
      for (const t of Object.keys(TYPES)) {
        const o = el('option', null, TYPES[t].name);
        o.value = t;
        type.appendChild(o);
      }
      type.value = n.type;
      type.addEventListener('change', () => { aether.set('node:' + id + ':type', type.value); type.blur(); });
      panel.appendChild(field('Type', type));

      const p = ro('x ' + pos(id).x + ' · y ' + pos(id).y);
      p.dataset.pos = '';
      panel.appendChild(field('Position', p));
      panel.appendChild(field('Keys', ro('node:' + id + ':*')));

      const b = el('div', 'buttons');
      const c = el('button', 'btn primary', connectFrom === id ? 'Cancel connect' : 'Connect');
      c.id = 'btn-connect';
      c.addEventListener('click', () => { connectFrom = connectFrom === id ? null : id; scheduleRender(true); });
      const d = el('button', 'btn danger', 'Delete');
      d.id = 'btn-delete';
      d.addEventListener('click', deleteSelected);
      b.append(c, d);
      panel.appendChild(b);
      const lc = [...links.values()].filter((l) => l.from === id || l.to === id).length;
      panel.appendChild(el('p', 'note', lc ? 'Deleting it also removes its ' + lc + (lc === 1 ? ' link.' : ' links.') : 'No links yet.'));
    } else {
      const l = links.get(selected.id);
      const id = l.id;
      panel.dataset.kind = 'link';
      const a = nodes.get(l.from), z = nodes.get(l.to);
      panel.appendChild(header(null, 'Link', l.speed || 'no speed'));
      panel.appendChild(field('From', ro(a.label)));
      panel.appendChild(field('To', ro(z.label)));
      const sp = el('select');
      sp.id = 'prop-speed';
      const opts = SPEEDS.includes(l.speed) ? SPEEDS : SPEEDS.concat([l.speed]);
      for (const s of opts) {
        const o = el('option', null, s);
        o.value = s;
        sp.appendChild(o);
      }
      sp.value = l.speed;
      sp.addEventListener('change', () => {
        const cur = aether.get('link:' + id);
        if (cur && typeof cur === 'object') aether.set('link:' + id, Object.assign({}, cur, { speed: sp.value }));
        sp.blur();
      });
      panel.appendChild(field('Speed', sp));
      panel.appendChild(field('Key', ro('link:' + id)));
      const b = el('div', 'buttons');
      const d = el('button', 'btn danger', 'Delete link');
      d.id = 'btn-delete';
      d.addEventListener('click', deleteSelected);
      b.appendChild(d);
      panel.appendChild(b);
    }
  }

  // ---- palette --------------------------------------------------------------------------------
  for (const t of Object.keys(TYPES)) {
    const b = el('button', 'tool');
    b.type = 'button';
    b.dataset.add = t;
    b.style.setProperty('--tc', TYPES[t].color);
    b.appendChild(icon(t));
    b.appendChild(el('span', null, TYPES[t].name));
    b.addEventListener('click', () => addDevice(t));
    $('palette').appendChild(b);
  }

  // ---- pointer --------------------------------------------------------------------------------
  function onNodeDown(ev) {
    if (ev.button !== 0) return;
    ev.stopPropagation();
    if (connectFrom) return; // the click decides
    const id = ev.currentTarget.dataset.node;
    const p = stagePoint(ev);
    // Where it is drawn (the model may lag a frame behind a drag that just ended).
    const e = ev.currentTarget;
    const n = { x: parseFloat(e.style.left) || pos(id).x, y: parseFloat(e.style.top) || pos(id).y };
    drag = { id, dx: p.x - n.x, dy: p.y - n.y, x: n.x, y: n.y, sx: ev.clientX, sy: ev.clientY, moved: false };
    ev.currentTarget.classList.add('dragging');
    ev.preventDefault();
  }
  function onNodeClick(ev) {
    ev.stopPropagation();
    const id = ev.currentTarget.dataset.node;
    if (suppressClick) { suppressClick = false; return; }
    if (connectFrom) {
      if (id === connectFrom) return; // no self links
      const from = connectFrom;
      connectFrom = null;
      connect(from, id);
      scheduleRender(true);
      return;
    }
    selected = { kind: 'node', id };
    scheduleRender(true);
  }
  window.addEventListener('mousemove', (ev) => {
    if (!drag) return;
    if (!drag.moved && Math.abs(ev.clientX - drag.sx) + Math.abs(ev.clientY - drag.sy) < 3) return;
    drag.moved = true;
    const p = stagePoint(ev);
    drag.x = Math.round(clamp(p.x - drag.dx, 0, W));
    drag.y = Math.round(clamp(p.y - drag.dy, 0, H));
    const e = nodeEls.get(drag.id);
    if (e) placeNode(e, drag.x, drag.y);
    relinkNode(drag.id);
    const pp = panel.querySelector('[data-pos]');
    if (pp && selected && selected.id === drag.id) pp.textContent = 'x ' + drag.x + ' · y ' + drag.y;
    queueCoords(drag.id, drag.x, drag.y);
  });
  window.addEventListener('mouseup', () => {
    if (!drag) return;
    const d = drag;
    if (d.moved) {
      const n = nodes.get(d.id);
      if (n) { n.x = d.x; n.y = d.y; }
      queueCoords(d.id, d.x, d.y);
      flushCoords();
      suppressClick = true;
      setTimeout(() => { suppressClick = false; }, 0);
    }
    const e = nodeEls.get(d.id);
    if (e) e.classList.remove('dragging');
    drag = null;
    scheduleRender(true);
  });

  viewport.addEventListener('click', (ev) => {
    if (ev.target.closest && (ev.target.closest('.node') || ev.target.closest('.link'))) return;
    connectFrom = null;
    selected = null;
    scheduleRender(true);
  });

  // presence: one message per animation frame at most
  let presenceOut = null, presenceFrame = 0;
  function sendPresenceSoon(x, y) {
    presenceOut = { x: Math.round(x), y: Math.round(y) };
    if (!presenceFrame) presenceFrame = requestAnimationFrame(() => {
      presenceFrame = 0;
      const p = presenceOut;
      presenceOut = null;
      if (p) aether.sendPresence(p.x, p.y);
    });
  }
  viewport.addEventListener('mousemove', (ev) => {
    mouse = stagePoint(ev);
    if (connectFrom) renderRubber();
    sendPresenceSoon(mouse.x, mouse.y);
  });
  viewport.addEventListener('mouseleave', () => sendPresenceSoon(-9999, -9999));

  // keyboard
  function typing(t) {
    return !!t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.tagName === 'SELECT' || t.isContentEditable);
  }
  document.addEventListener('keydown', (ev) => {
    if (typing(ev.target)) return;
    if (ev.key === 'Escape') {
      if (connectFrom) connectFrom = null;
      else selected = null;
      scheduleRender(true);
    } else if ((ev.key === 'Delete' || ev.key === 'Backspace') && selected) {
      ev.preventDefault();
      deleteSelected();
    }
  });

  // ---- remote cursors -------------------------------------------------------------------------
  const cursors = new Map(); // id -> {el, x, y, color, seen}
  const cursorUpdates = new Map();
  let cursorFrame = 0;
  function safeColor(c) {
    return typeof c === 'string' && /^(#[0-9a-f]{3,8}|(hsl|rgb)a?\([0-9.,%\s]+\))$/i.test(c) ? c : '#8b98a8';
  }
  aether.onPresence((id, x, y, color) => {
    if (id === aether.cursorId) return;
    cursorUpdates.set(id, { x, y, color });
    if (!cursorFrame) cursorFrame = requestAnimationFrame(applyCursors);
  });
  function applyCursors() {
    cursorFrame = 0;
    const now = Date.now();
    for (const [id, u] of cursorUpdates) {
      let c = cursors.get(id);
      if (!c) {
        const e = el('div', 'cursor');
        e.dataset.cursor = id;
        const s = svg('svg', { viewBox: '0 0 18 18' });
        s.appendChild(svg('path', { d: 'M2 1.5L15.5 8.5 9.2 10 6.5 16z', stroke: '#0b0f14', 'stroke-width': '1.2', 'stroke-linejoin': 'round' }));
        e.appendChild(s);
        e.appendChild(el('span', null, 'peer ' + String(id).slice(0, 4)));
        $('cursors').appendChild(e);
        c = { el: e };
        cursors.set(id, c);
      }
      const col = safeColor(u.color);
      c.el.querySelector('path').setAttribute('fill', col);
      c.el.querySelector('span').style.background = col;
      c.seen = now;
      const off = u.x < -1000 || u.y < -1000;
      c.el.classList.toggle('gone', off);
      if (!off) c.el.style.transform = 'translate(' + u.x + 'px,' + u.y + 'px)';
    }
    cursorUpdates.clear();
    renderPeers();
  }
  function removeCursor(id) {
    const c = cursors.get(id);
    cursorUpdates.delete(id);
    if (!c) return;
    cursors.delete(id);
    c.el.classList.add('gone');
    c.el.dataset.leaving = '';
    setTimeout(() => c.el.remove(), 260);
    renderPeers();
  }
  aether.onPresenceLeave(removeCursor);
  setInterval(() => {
    const now = Date.now();
    for (const [id, c] of cursors) if (now - c.seen > CURSOR_TTL_MS) removeCursor(id);
  }, 1000);
  function renderPeers() {
    const n = cursors.size;
    $('peers').textContent = n ? n + (n === 1 ? ' other cursor' : ' other cursors') : '';
  }

  // ---- status ---------------------------------------------------------------------------------
  let refused = null;
  aether.onError((e) => {
    if (e && e.fatal) refused = e.message || e.reason || 'access refused';
    renderStatus();
  });
  aether.onStatus((connected) => {
    // The relay sends presence-leave only to live connections: after a drop, forget every cursor.
    if (!connected) for (const id of [...cursors.keys()]) removeCursor(id);
    renderStatus();
  });
  function renderStatus() {
    const s = aether.status;
    const pending = aether.pendingWrites();
    const pill = $('status');
    const you = $('you');
    let state, text;
    if (s.fatal || refused) {
      state = 'refused';
      text = 'refused by the relay' + (s.reason ? ' · ' + s.reason : '') + (pending ? ' · ' + pending + ' waiting' : '');
    } else if (!s.connected) {
      state = 'offline';
      text = pending ? 'offline · ' + pending + (pending === 1 ? ' change waiting' : ' changes waiting') : (aether.protocol == null ? 'connecting…' : 'offline · reconnecting…');
      if (aether.protocol == null && !pending) state = 'connecting';
    } else if (pending) {
      state = 'syncing';
      text = 'syncing · ' + pending + (pending === 1 ? ' change' : ' changes');
    } else {
      state = 'connected';
      text = 'connected · ' + url.replace(/\?.*$/, '');
    }
    if (pill.dataset.state !== state) pill.dataset.state = state;
    if ($('status-text').textContent !== text) $('status-text').textContent = text;
    pill.title = text;
    if (s.connected && aether.clientColor) {
      you.hidden = false;
      $('me').hidden = false;
      you.style.background = safeColor(aether.clientColor);
      you.title = 'you: ' + (aether.clientId || '').slice(0, 8);
    } else {
      you.hidden = true;
      $('me').hidden = true;
    }
  }
  setInterval(renderStatus, 400);

  let flashTimer = 0;
  function flash(msg) {
    const b = $('banner');
    b.textContent = msg;
    b.hidden = false;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { b.hidden = true; }, 2200);
  }

  // ---- start ----------------------------------------------------------------------------------
  aether.onAny((key) => {
    if (key.startsWith('node:') || key.startsWith('link:')) scheduleRender(true);
    renderStatus();
  });
  function centre() {
    viewport.scrollLeft = Math.max(0, (W - viewport.clientWidth) / 2);
    viewport.scrollTop = Math.max(0, (H - viewport.clientHeight) / 2);
  }
  centre();
  requestAnimationFrame(centre);
  scheduleRender(true);
  renderStatus();
  aether.ready().then(() => scheduleRender(true));
  window.topology = { addDevice, connect, deleteSelected, select: (kind, id) => { selected = id ? { kind, id } : null; scheduleRender(true); } };
})();

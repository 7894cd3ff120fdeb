// A plain <script src="/aether.js"> page: the UMD global (and window.Aether).
const a = new Aether('ws://127.0.0.1:8211/ws');
const b = new window.Aether('ws://127.0.0.1:8211/ws');
const s: Aether.Status = a.status;
a.set('k', { x: 1 });
console.log(s.connected, b.url);
